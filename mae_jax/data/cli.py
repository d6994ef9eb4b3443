"""`mae-jax-convert` (and `python -m mae_jax.data.convert`): quiet by default.

TensorFlow prints its C++ start-up lines when it is imported, before the converter's
argument parsing runs, so the choice is made here, from the raw arguments, first:
`-v` / `--verbose` keeps TensorFlow's and TFDS's lines, otherwise only the converter's
results, warnings and errors are printed.
"""

from __future__ import annotations

import os
import sys

VERBOSE_FLAGS = ("-v", "--verbose")


def verbose(argv) -> bool:
  return any(a in VERBOSE_FLAGS for a in argv)


def quiet_tensorflow(argv) -> None:
  """Before TensorFlow is imported: its INFO/WARNING start-up lines off unless verbose (a
  TF_CPP_MIN_LOG_LEVEL the user set is kept)."""
  if not verbose(argv):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  quiet_tensorflow(argv)
  from mae_jax.data import convert
  return convert.main(argv)
