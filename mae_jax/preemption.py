"""Stop requests for the training loop: SIGTERM (what SLURM and TPU maintenance send) and
SIGINT (Ctrl-C) become a flag the loop checks after each step.

The handlers are installed before anything compiles, so a signal during XLA compilation
only sets the flag (a KeyboardInterrupt raised inside compilation could end in a
segmentation fault); the running step finishes, a checkpoint is written and the run
returns `{"preempted_at": step, "signal": name}`. With several processes the decision is
JAX's preemption sync point, so every host stops at the same step.
"""

from __future__ import annotations

import signal
import threading

import jax

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionWatcher:
  """Context manager: installs the handlers (single process, main thread) and restores the
  previous ones on exit; `signal_name` is the first signal received ("" when none)."""

  def __init__(self):
    self.signal_name = ""
    self._previous = {}

  @property
  def requested(self) -> bool:
    return bool(self.signal_name)

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handler)
    return self

  def __exit__(self, *exc):
    self.close()

  def _handler(self, signum, frame):
    del frame
    self.signal_name = self.signal_name or signal.Signals(signum).name

  def should_stop(self, step) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.signal_name = self.signal_name or "SIGTERM"
          return True
      except RuntimeError:  # preemption service not enabled in this jax.distributed set-up
        pass
      return False
    return self.requested

  def close(self):
    while self._previous:
      sig, handler = self._previous.popitem()
      signal.signal(sig, handler)
