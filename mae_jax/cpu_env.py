"""glibc malloc settings that stop XLA:CPU from page-faulting its temporaries every step.

XLA:CPU allocates a train step's temporary buffers (about 4 GB at `e2e-base`,
batch 32) afresh on every execution. With glibc's defaults these large blocks
come from fresh mmap pages or from per-thread arenas that are trimmed again, so
each step took ~1M minor page faults and ~1.8 s of kernel time on the 2-core
development machine (3.7 s per step). With one arena, no mmap for large blocks
and no trimming, the memory is reused: 0 page faults and 2.8 s per step, same
peak RSS (5.1 GB) in a JAX-only process. The cost: memory freed is kept, not
returned to the system; in the benchmark process, which also runs PyTorch, the
peak at e2e-base batch 64 rose from 8.6 to 15.8 GiB. Set MAE_JAX_MALLOC_TUNING=0
(launch scripts) if host memory is tight. `launch/setup_env.sh` exports these for every launch script;
the variables must be set before Python starts (glibc reads them once), so the
trainer only warns when they are missing on a CPU backend.
"""

from __future__ import annotations

import logging
import os

SETTINGS = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
}


def missing() -> list[str]:
  return [k for k in SETTINGS if k not in os.environ]


def export_line() -> str:
  return "export " + " ".join(f"{k}={v}" for k, v in SETTINGS.items())


def describe() -> str:
  return ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in SETTINGS)


def warn_if_untuned(backend: str) -> bool:
  """Logs once how to avoid the page faults; True when a warning was given."""
  if backend != "cpu" or not missing():
    return False
  logging.warning("XLA:CPU train steps run ~25%% slower with glibc's default malloc "
                  "(page faults on every step's temporaries). Before starting Python: %s "
                  "(launch/*.sh do this; see mae_jax/cpu_env.py).", export_line())
  return True
