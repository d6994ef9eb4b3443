"""Readable progress lines of the training loop: step, loss, lr, images/s and ETA.

The step time is the median of the recent steps' wall times, and the first step of a run
(which compiles) is never counted: compilation of later shapes (a new sparse-token bucket)
and evaluation pauses are single outliers that the median ignores, so the ETA is the time
the remaining steps take, not compile time spread over them.
"""

from __future__ import annotations

import collections
import sys
import time

import jax
import numpy as np


class Progress:
  """`tick(step)` after every step (its metrics on the host); `line(step, metrics)`."""

  def __init__(self, total_steps, batch_size, start_step, window: int = 50, clock=time.time):
    self.total, self.batch, self.first = total_steps, batch_size, start_step + 1
    self.clock, self.last = clock, None
    self.times = collections.deque(maxlen=window)

  def tick(self, step):
    now = self.clock()
    if self.last is not None and step > self.first:
      self.times.append(now - self.last)
    self.last = now

  def step_seconds(self) -> float:
    return float(np.median(self.times)) if self.times else float("nan")

  def line(self, step, metrics):
    dt = self.step_seconds()
    rate = 1.0 / dt if dt > 0 else float("nan")
    eta = (self.total - step) * dt
    return (f"step {step}/{self.total}  loss {metrics['loss']:.5f}  lr {metrics['lr']:.3e}  "
            f"{rate * self.batch:.1f} img/s  ETA {eta / 60:.1f} min")


def print0(line: str):
  """A progress line from process 0, written in one call so that log lines (stderr) never
  land in the middle of it when both streams go to one file."""
  if jax.process_index() == 0:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
