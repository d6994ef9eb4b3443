"""Quiet TensorFlow by default, decided from the raw arguments before TensorFlow is imported
(it prints its C++ start-up lines at import): `-v` / `--verbose` keeps them. A leaf module
(no TensorFlow), shared by the converter and its entry point `data/cli.py`."""

from __future__ import annotations

import os

VERBOSE_FLAGS = ("-v", "--verbose")


def verbose(argv) -> bool:
  return any(a in VERBOSE_FLAGS for a in argv)


def quiet_tensorflow(argv) -> None:
  """Before TensorFlow is imported: its INFO/WARNING start-up lines off unless verbose (a
  TF_CPP_MIN_LOG_LEVEL the user set is kept)."""
  if not verbose(argv):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
