"""Detection and validation of the public CMS End-to-End jet-image layouts.

This module never imports TensorFlow. It inspects a file (HDF5 or parquet),
decides which public layout it follows from the keys present (names, dtypes,
shapes) and returns a `Layout` describing where the images, labels and
regression targets live for every split. It also provides the chunked readers
used by `mae_jax.data.convert`. The work is split by format family:
`layouts` (the shared types and checks), `schemas_h5` (HDF5 layouts) and
`schemas_parquet`; this module dispatches and re-exports their public names.

Supported layouts (`format` names):
  e2e_split
    `{train,validation,test}_jet` float32 `[N,125,125,C]` channels-last
    (C=8 boosted top: track_pt, track_d0, track_dz, ecal, hcal, bpix1, bpix2,
    bpix3; C=3 quark/gluon: tracks, ecal, hcal) and `{split}_meta` float32
    `[N,k]` with the label in column 0 and regression targets in columns
    1..k-1 (names from the file attribute `meta_names` when present, else
    `["jet_mass", "jet_pt"]` for k=3 and `meta_i` otherwise). Any subset of
    the three splits may be present.
  ml4sci
    `jet` `[N,125,125,8]` with `Y` `[N,1]` (labelled) or `jet` alone
    (unlabelled: label = -1).
  ml4sci_split
    `X_train`, `X_test`, `Y_train`, `Y_test`.
  qg_opendata
    `X_jets` `[N,125,125,3]`, `y`, `m0` (jet mass), `pt`.
  egamma
    `X` `[N,32,32,2]` (energy, time), `y` (electron = 0, photon = 1).
  parquet
    parquet file with columns `X_jets` (nested lists; `[3][125][125]`
    channels-first in the public release, transposed here to channels-last),
    `y`, `m0`, `pt`. Read row group by row group, never whole.

Single-split layouts (`ml4sci`, `qg_opendata`, `egamma`, `parquet`)
go to split `train` unless hold-out fractions `(V, T)` are given, in which
case `inspect_file` returns by-index ranges (`holdout_ranges`) that the
converter replaces by a seeded permutation stratified by label
(`mae_jax.data.splits`).
"""

from __future__ import annotations

import os
from typing import Iterator

from mae_jax.errors import UsageError
from mae_jax.data.layouts import (CHANNELS_3, CHANNELS_8, CHANNELS_EGAMMA, FORMATS, QG_TARGETS,
                                  SPLITS, Chunk, Layout, SplitSpec, _err, check_compatible,
                                  check_label_values, holdout_ranges, parse_holdout)
from mae_jax.data.schemas_h5 import _detect_h5, _open_h5, inspect_h5, iter_h5
from mae_jax.data.schemas_parquet import inspect_parquet, iter_parquet

__all__ = ["CHANNELS_3", "CHANNELS_8", "CHANNELS_EGAMMA", "FORMATS", "QG_TARGETS", "SPLITS",
           "Chunk", "Layout", "SplitSpec", "check_compatible", "check_label_values",
           "detect_format", "holdout_ranges", "inspect_file", "is_parquet", "iter_chunks",
           "parse_holdout"]


def is_parquet(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      head = f.read(4)
  except OSError:
    return False
  return head == b"PAR1"


def detect_format(path: str) -> str:
  """Return the format name of `path` from the keys it contains."""
  path = str(path)
  if not os.path.exists(path):
    raise _err(path, None, "file does not exist")
  if is_parquet(path) or path.endswith(".parquet"):
    return "parquet"
  with _open_h5(path) as f:
    return _detect_h5(path, set(f.keys()), f)


def inspect_file(path: str, format: str = "auto", holdout=None) -> Layout:
  """Detect (or check) the layout of `path` and validate names/dtypes/shapes.

  Label values are validated too (must be in {0, 1}); this reads only the
  label arrays. Returns a `Layout`.
  """
  path = os.path.abspath(str(path))
  holdout = parse_holdout(holdout)
  if not os.path.exists(path):
    raise _err(path, None, "file does not exist")
  if format not in ("auto",) + FORMATS:
    raise UsageError(f"unknown format {format!r}; expected 'auto' or one of {FORMATS}")
  if format == "parquet" or (format == "auto" and (is_parquet(path) or path.endswith(".parquet"))):
    return inspect_parquet(path, holdout)
  return inspect_h5(path, format, holdout)


def iter_chunks(layout: Layout, split: str, chunk_size: int = 256,
                start: int | None = None, stop: int | None = None) -> Iterator[Chunk]:
  """Yield `Chunk` objects covering rows [start, stop) of `layout.splits[split]` in order.

  `start`/`stop` default to the split's own range (a Beam work item reads a slice of it).
  """
  spec = layout.splits[split]
  lo = spec.start if start is None else start
  hi = spec.stop if stop is None else min(stop, spec.stop)
  reader = iter_parquet if layout.format == "parquet" else iter_h5
  yield from reader(layout, spec, chunk_size, lo, hi)
