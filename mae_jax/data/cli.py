"""`mae-jax-convert` (and `python -m mae_jax.data.convert`): quiet by default.

TensorFlow prints its C++ start-up lines when it is imported, before the converter's
argument parsing runs, so the choice is made here, from the raw arguments, first:
`-v` / `--verbose` keeps TensorFlow's and TFDS's lines, otherwise only the converter's
results, warnings and errors are printed.
"""

from __future__ import annotations

import sys

from mae_jax.data.tf_quiet import VERBOSE_FLAGS, quiet_tensorflow, verbose  # noqa: F401


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  quiet_tensorflow(argv)
  from mae_jax.data import convert
  return convert.main(argv)
