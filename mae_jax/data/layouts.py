"""The types every input format shares: `Layout`, `SplitSpec`, `Chunk`, and their checks.

Split out of `mae_jax.data.schemas` (the entry point, which re-exports these
names): the per-format inspectors (`schemas_h5`, `schemas_parquet`) build
`Layout`s and yield `Chunk`s from here. No TensorFlow, no h5py or pyarrow import.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from mae_jax.errors import DataFormatError, UsageError

SPLITS = ("train", "validation", "test")

FORMATS = ("e2e_split", "ml4sci", "ml4sci_split", "qg_opendata", "egamma", "parquet")

CHANNELS_8 = ["track_pt", "track_d0", "track_dz", "ecal", "hcal", "bpix1", "bpix2", "bpix3"]
CHANNELS_3 = ["tracks", "ecal", "hcal"]
CHANNELS_EGAMMA = ["energy", "time"]
# Regression targets of the quark/gluon open-data layouts: column -> target name.
QG_TARGETS = {"m0": "jet_mass", "pt": "jet_pt"}


@dataclasses.dataclass
class SplitSpec:
  """Where one output split of one input file lives.

  `start`/`stop` are row indices in `image_key`; `label_column` is the
  column of `label_key` holding the label (`None` for 1-D labels or
  `[N,1]` arrays); `target_keys` is a list of `(key, column)` pairs,
  `column=None` meaning a 1-D (or `[N,1]`) array.
  """

  image_key: str
  label_key: str | None
  label_column: int | None
  target_keys: list[tuple[str, int | None]]
  start: int
  stop: int

  @property
  def num_rows(self) -> int:
    return self.stop - self.start


@dataclasses.dataclass
class Layout:
  """Description of one input file."""

  path: str
  format: str
  image_shape: tuple[int, int, int]  # (H, W, C), channels-last after conversion
  channel_names: list[str]
  target_names: list[str]
  label_names: list[str] | None
  splits: dict[str, SplitSpec]
  channels_first: bool = False  # parquet: stored [C][H][W]
  image_dtype: str = "float32"
  num_rows: dict[str, int] = dataclasses.field(default_factory=dict)  # per image key

  @property
  def num_targets(self) -> int:
    return len(self.target_names)

  def image_keys(self) -> dict[str, str]:
    return {s: spec.image_key for s, spec in self.splits.items()}

  def label_key(self) -> str | None:
    keys = {spec.label_key for spec in self.splits.values()}
    return keys.pop() if len(keys) == 1 else None

  def target_keys(self) -> list[str]:
    for spec in self.splits.values():
      return [k if c is None else f"{k}[:,{c}]" for k, c in spec.target_keys]
    return []

  def describe(self) -> dict[str, Any]:
    return {
        "path": self.path,
        "format": self.format,
        "image_shape": list(self.image_shape),
        "channel_names": list(self.channel_names),
        "target_names": list(self.target_names),
        "target_keys": self.target_keys(),
        "label_names": self.label_names,
        "channels_first": self.channels_first,
        "splits": {s: dataclasses.asdict(v) for s, v in self.splits.items()},
    }


# Small helpers.


def _name(path: str) -> str:
  return os.path.basename(str(path))


def _err(path: str, key: str | None, msg: str) -> DataFormatError:
  where = f"{_name(path)!s}" + (f" key '{key}'" if key else "")
  return DataFormatError(f"{where}: {msg} (file: {path})")


def _attr_list(attrs, name: str) -> list[str] | None:
  if name not in attrs:
    return None
  val = attrs[name]
  if isinstance(val, (bytes, str)):
    val = [val]
  out = []
  for v in np.asarray(val).ravel().tolist():
    out.append(v.decode() if isinstance(v, bytes) else str(v))
  return out


def _is_numeric_image_dtype(dt: np.dtype) -> bool:
  return dt.kind in "fiu" and dt.itemsize <= 8


def parse_holdout(holdout) -> tuple[float, float] | None:
  """Parse `"V,T"` (or a 2-sequence) into validated fractions."""
  if holdout is None:
    return None
  if isinstance(holdout, str):
    parts = [p for p in holdout.replace(" ", "").split(",") if p != ""]
    try:
      vals = [float(p) for p in parts]
    except ValueError as e:
      raise UsageError(f"--holdout expects 'VAL,TEST' fractions, got {holdout!r}") from e
  else:
    vals = [float(v) for v in holdout]
  if len(vals) != 2:
    raise UsageError(f"--holdout expects two fractions 'VAL,TEST', got {holdout!r}")
  v, t = vals
  if v < 0 or t < 0 or v + t >= 1:
    raise UsageError(f"--holdout fractions must be >= 0 and sum to < 1, got {v},{t}")
  return (v, t)


def holdout_ranges(n: int, holdout: tuple[float, float] | None) -> dict[str, tuple[int, int]]:
  """Deterministic by-index split of `n` rows (see module docstring)."""
  if holdout is None:
    return {"train": (0, n)}
  n_val = int(round(holdout[0] * n))
  n_test = int(round(holdout[1] * n))
  n_train = n - n_val - n_test
  out = {"train": (0, n_train)}
  if n_val:
    out["validation"] = (n_train, n_train + n_val)
  if n_test:
    out["test"] = (n_train + n_val, n)
  return out


def _default_channel_names(c: int, known=(CHANNELS_8, CHANNELS_3)) -> list[str]:
  """The names in `known` with `c` entries, else ch0, ch1, ..."""
  for names in known:
    if len(names) == c:
      return list(names)
  return [f"ch{i}" for i in range(c)]


# Labels.


def _label_column(arr: np.ndarray, column: int | None) -> np.ndarray:
  if arr.ndim == 2:
    return arr[:, column or 0]
  return arr


def check_label_values(path: str, key: str, values: np.ndarray, offset: int) -> np.ndarray:
  """Return labels as int64; raise DataFormatError if not all in {0, 1}."""
  v = np.asarray(values)
  if v.dtype.kind == "b":
    return v.astype(np.int64)
  ok = (v == 0) | (v == 1)
  if not np.all(ok):
    bad = np.flatnonzero(~ok)
    bad_vals = np.unique(v[bad])[:8].tolist()
    raise _err(
        path,
        key,
        f"labels must be 0 or 1; found values {bad_vals} ({bad.size} bad rows), "
        f"first at index {int(bad[0]) + offset}",
    )
  return v.astype(np.int64)


# Chunks.


@dataclasses.dataclass
class Chunk:
  """A block of consecutive rows of one split of one file."""

  start: int  # row index of the first row in the source array
  images: np.ndarray  # float32 [B,H,W,C] channels-last, C-contiguous
  labels: np.ndarray  # int64 [B] (-1 if unlabelled)
  targets: np.ndarray  # float32 [B,K]
  target_keys: list[str]


def _as_f32_images(x: np.ndarray) -> np.ndarray:
  if x.dtype != np.float32:
    x = x.astype(np.float32)
  return np.ascontiguousarray(x)


# Several inputs.


def _agreed(layout: Layout) -> dict[str, str]:
  """What input files must agree on, as the text an error shows."""
  labelled = next(iter(layout.splits.values())).label_key is not None
  return {
      "format": f"'{layout.format}'",
      "image shape": f"images {list(layout.image_shape)}",
      "channel names": str(layout.channel_names),
      "regression targets": str(layout.target_names),
      "labels": "labels" if labelled else "no labels",
  }


def check_compatible(layouts: Sequence[Layout]) -> None:
  """Multiple inputs must agree on format, image shape, channels, targets and labels."""
  if not layouts:
    raise UsageError("no input files")
  ref = layouts[0]
  mine = _agreed(ref)
  for other in layouts[1:]:
    theirs = _agreed(other)
    for what in mine:
      a, b = mine[what], theirs[what]
      if a != b:
        if what == "image shape" and other.image_shape[:2] == ref.image_shape[:2]:
          what = "channel count"
        ref_key, other_key = (next(iter(lay.splits.values())).image_key for lay in (ref, other))
        raise DataFormatError(
            f"input files disagree on {what}: {_name(ref.path)} key '{ref_key}' has {a} but "
            f"{_name(other.path)} key '{other_key}' has {b} ({ref.path}, {other.path})")
