"""Detection and validation of the public CMS End-to-End jet-image layouts.

This module never imports TensorFlow. It inspects a file (HDF5 or parquet),
decides which public layout it follows from the keys present (names, dtypes,
shapes) and returns a `Layout` describing where the images, labels and
regression targets live for every split. It also provides the chunked readers
used by `mae_jax.data.convert`.

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
case the split is deterministic by row index: with `n_val = round(V*N)` and
`n_test = round(T*N)`, rows `[0, N-n_val-n_test)` are `train`, the next
`n_val` rows are `validation` and the last `n_test` rows are `test`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Sequence

import numpy as np

from mae_jax.errors import DataFormatError

SPLITS = ("train", "validation", "test")

FORMATS = ("e2e_split", "ml4sci", "ml4sci_split", "qg_opendata", "egamma", "parquet")

CHANNELS_8 = ["track_pt", "track_d0", "track_dz", "ecal", "hcal", "bpix1", "bpix2", "bpix3"]
CHANNELS_3 = ["tracks", "ecal", "hcal"]
CHANNELS_EGAMMA = ["energy", "time"]
# Regression targets of the quark/gluon open-data layouts: column -> target name.
QG_TARGETS = {"m0": "jet_mass", "pt": "jet_pt"}

# Number of rows read at once when scanning a label column.
_LABEL_SCAN_ROWS = 1 << 20


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
      raise ValueError(f"--holdout expects 'VAL,TEST' fractions, got {holdout!r}") from e
  else:
    vals = [float(v) for v in holdout]
  if len(vals) != 2:
    raise ValueError(f"--holdout expects two fractions 'VAL,TEST', got {holdout!r}")
  v, t = vals
  if v < 0 or t < 0 or v + t >= 1:
    raise ValueError(f"--holdout fractions must be >= 0 and sum to < 1, got {v},{t}")
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


# Detection.


def is_parquet(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      head = f.read(4)
  except OSError:
    return False
  return head == b"PAR1"


def _open_h5(path: str):
  import h5py

  if not os.path.exists(path):
    raise _err(path, None, "file does not exist")
  try:
    return h5py.File(path, "r")
  except OSError as e:  # truncated / not HDF5 / unreadable
    raise _err(path, None, f"cannot open as HDF5 (truncated or unreadable?): {e}") from e


def _dataset_summary(f) -> dict[str, tuple[tuple[int, ...], str]]:
  import h5py

  out = {}
  for k in f.keys():
    obj = f.get(k)
    if isinstance(obj, h5py.Dataset):
      out[k] = (tuple(obj.shape), str(obj.dtype))
    else:
      out[k] = ((), "group")
  return out


def detect_format(path: str) -> str:
  """Return the format name of `path` from the keys it contains."""
  path = str(path)
  if not os.path.exists(path):
    raise _err(path, None, "file does not exist")
  if is_parquet(path) or path.endswith(".parquet"):
    return "parquet"
  with _open_h5(path) as f:
    return _detect_h5(path, set(f.keys()), f)


def _detect_h5(path: str, keys: set[str], f) -> str:
  if any(f"{s}_jet" in keys for s in SPLITS):
    return "e2e_split"
  if "X_train" in keys or "X_test" in keys:
    return "ml4sci_split"
  if "jet" in keys:
    return "ml4sci"
  if "X_jets" in keys:
    return "qg_opendata"
  if "X" in keys:
    return "egamma"
  summ = _dataset_summary(f)
  found = ", ".join(f"{k} {list(s)} {d}" for k, (s, d) in sorted(summ.items())) or "none"
  raise _err(
      path,
      None,
      "no known layout (expected one of {train,validation,test}_jet+_meta, jet[+Y], "
      f"X_train/X_test/Y_train/Y_test, X_jets+y, X+y); keys found: {found}",
  )


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
    raise ValueError(f"unknown format {format!r}; expected 'auto' or one of {FORMATS}")
  if format == "parquet" or (format == "auto" and (is_parquet(path) or path.endswith(".parquet"))):
    return _inspect_parquet(path, holdout)
  with _open_h5(path) as f:
    keys = set(f.keys())
    detected = _detect_h5(path, keys, f)
    if format != "auto" and format != detected:
      summ = _dataset_summary(f)
      found = ", ".join(f"{k} {list(s)}" for k, (s, _) in sorted(summ.items()))
      raise _err(path, None, f"requested format '{format}' but keys look like '{detected}'; "
                 f"keys found: {found}")
    if holdout is not None and detected in ("e2e_split", "ml4sci_split"):
      raise _err(path, None, f"--holdout is only for single-split formats; this {detected} file "
                 "already has splits")
    fn = {
        "e2e_split": _inspect_e2e_split,
        "ml4sci": _inspect_ml4sci,
        "ml4sci_split": _inspect_ml4sci_split,
        "qg_opendata": _inspect_qg,
        "egamma": _inspect_egamma,
    }[detected]
    layout = fn(path, f, holdout)
    _validate_labels_h5(path, f, layout)
  return layout


# HDF5 validation helpers.


def _get_ds(path, f, key):
  import h5py

  if key not in f:
    raise _err(path, key, f"missing required key; keys found: {sorted(f.keys())}")
  ds = f[key]
  if not isinstance(ds, h5py.Dataset):
    raise _err(path, key, "is a group, expected a dataset")
  return ds


def _check_images(path, f, key, expect_hw=None,
                  expect_c=None) -> tuple[int, tuple[int, int, int], str]:
  ds = _get_ds(path, f, key)
  shape = tuple(ds.shape)
  if len(shape) != 4:
    raise _err(path, key,
               f"expected rank-4 images [N,H,W,C] (channels-last), got shape {list(shape)}")
  if not _is_numeric_image_dtype(ds.dtype):
    raise _err(path, key, f"expected float32 images, got dtype {ds.dtype} with shape {list(shape)}")
  n, h, w, c = shape
  if expect_hw is not None and (h, w) != tuple(expect_hw):
    raise _err(path, key,
               f"expected images of {expect_hw[0]}x{expect_hw[1]}, got shape {list(shape)}")
  if expect_c is not None and c not in expect_c:
    raise _err(path, key, f"expected {' or '.join(map(str, expect_c))} channels (last axis), "
               f"got shape {list(shape)}")
  if c > 64 and h <= 64:
    raise _err(path, key, f"images look channels-first ({list(shape)}); expected [N,H,W,C]")
  return n, (h, w, c), str(ds.dtype)


def _check_vector(path, f, key, n, image_key, max_cols=1) -> int | None:
  """Check a [N] or [N,k] array matches `n` rows; return its column count."""
  ds = _get_ds(path, f, key)
  shape = tuple(ds.shape)
  if ds.dtype.kind not in "fiub":
    raise _err(path, key,
               f"expected a numeric array, got dtype {ds.dtype} with shape {list(shape)}")
  if len(shape) not in (1, 2):
    raise _err(path, key, f"expected shape [N] or [N,k], got {list(shape)}")
  if shape[0] != n:
    raise _err(path, key, f"length mismatch: '{key}' has {shape[0]} rows (shape {list(shape)}) "
               f"but '{image_key}' has {n}")
  if len(shape) == 2 and max_cols is not None and shape[1] > max_cols:
    raise _err(path, key, f"expected shape [N] or [N,1], got {list(shape)}")
  return shape[1] if len(shape) == 2 else None


def _channel_names(f, c: int, path: str, key: str) -> list[str]:
  names = _attr_list(f.attrs, "channel_names")
  if names is None and key in f:
    names = _attr_list(f[key].attrs, "channel_names")
  if names is not None:
    if len(names) != c:
      raise _err(path, key, f"attribute channel_names has {len(names)} entries but images "
                 f"have {c} channels")
    return names
  return _default_channel_names(c)


def _default_channel_names(c: int, known=(CHANNELS_8, CHANNELS_3)) -> list[str]:
  """The names in `known` with `c` entries, else ch0, ch1, ..."""
  for names in known:
    if len(names) == c:
      return list(names)
  return [f"ch{i}" for i in range(c)]


def _inspect_e2e_split(path, f, holdout) -> Layout:
  del holdout  # refused for split formats by inspect_file
  splits: dict[str, SplitSpec] = {}
  shape = None
  dtype = "float32"
  k_meta = None
  first_key = None
  for s in SPLITS:
    ik, mk = f"{s}_jet", f"{s}_meta"
    if ik not in f:
      if mk in f:
        raise _err(path, mk, f"found '{mk}' but no '{ik}'")
      continue
    n, shp, dtype = _check_images(path, f, ik)
    if shape is None:
      shape, first_key = shp, ik
    elif shp != shape:
      raise _err(path, ik,
                 f"image shape {list(shp)} differs from '{first_key}' shape {list(shape)}")
    if mk not in f:
      raise _err(path, mk, f"missing '{mk}' (labels) for images '{ik}' of shape {[n, *shp]}")
    cols = _check_vector(path, f, mk, n, ik, max_cols=None)
    k = cols if cols is not None else 1
    if k_meta is None:
      k_meta = k
    elif k != k_meta:
      raise _err(path, mk, f"has {k} columns but another split's meta has {k_meta}")
    targets = [(mk, j) for j in range(1, k)]
    splits[s] = SplitSpec(ik, mk, 0 if cols is not None else None, targets, 0, n)
  assert shape is not None and k_meta is not None
  names = _attr_list(f.attrs, "meta_names")
  if names is not None and len(names) == k_meta:
    target_names = names[1:]
  elif names is not None and len(names) == k_meta - 1:
    target_names = names
  elif k_meta == 3:
    target_names = ["jet_mass", "jet_pt"]
  else:
    target_names = [f"meta_{j}" for j in range(1, k_meta)]
  return Layout(
      path=path,
      format="e2e_split",
      image_shape=shape,
      channel_names=_channel_names(f, shape[2], path, first_key),
      target_names=target_names,
      label_names=_attr_list(f.attrs, "label_names"),
      splits=splits,
      image_dtype=dtype,
  )


def _single(path, f, fmt, ik, lk, targets, holdout, expect_hw=None, expect_c=None,
            channel_names=None, target_names=(), label_names=None) -> Layout:
  n, shape, dtype = _check_images(path, f, ik, expect_hw, expect_c)
  lcol = None
  if lk is not None:
    cols = _check_vector(path, f, lk, n, ik)
    lcol = 0 if cols is not None else None
  tk = []
  for key in targets:
    cols = _check_vector(path, f, key, n, ik)
    tk.append((key, 0 if cols is not None else None))
  splits = {
      s: SplitSpec(ik, lk, lcol, list(tk), a, b) for s, (a, b) in holdout_ranges(n, holdout).items()
  }
  return Layout(
      path=path,
      format=fmt,
      image_shape=shape,
      channel_names=channel_names or _channel_names(f, shape[2], path, ik),
      target_names=list(target_names),
      label_names=label_names or _attr_list(f.attrs, "label_names"),
      splits=splits,
      image_dtype=dtype,
  )


def _inspect_ml4sci(path, f, holdout) -> Layout:
  lk = "Y" if "Y" in f else None
  return _single(path, f, "ml4sci", "jet", lk, [], holdout)


def _inspect_ml4sci_split(path, f, holdout) -> Layout:
  del holdout  # refused for split formats by inspect_file
  splits = {}
  shape = None
  dtype = "float32"
  for s, suffix in (("train", "train"), ("test", "test")):
    ik, lk = f"X_{suffix}", f"Y_{suffix}"
    if ik not in f:
      continue
    n, shp, dtype = _check_images(path, f, ik)
    if shape is not None and shp != shape:
      raise _err(path, ik, f"image shape {list(shp)} differs from the other split's {list(shape)}")
    shape = shp
    if lk not in f:
      raise _err(path, lk, f"missing labels '{lk}' for images '{ik}' of shape {[n, *shp]}")
    cols = _check_vector(path, f, lk, n, ik)
    splits[s] = SplitSpec(ik, lk, 0 if cols is not None else None, [], 0, n)
  if not splits:
    raise _err(path, "X_train", f"no X_train/X_test images; keys found: {sorted(f.keys())}")
  first = next(iter(splits.values())).image_key
  return Layout(path, "ml4sci_split", shape, _channel_names(f, shape[2], path, first), [],
                _attr_list(f.attrs, "label_names"), splits, image_dtype=dtype)


def _inspect_qg(path, f, holdout) -> Layout:
  if "y" not in f:
    raise _err(path, "y", f"missing labels 'y' for images 'X_jets'; keys found: {sorted(f.keys())}")
  targets = [key for key in QG_TARGETS if key in f]
  return _single(path, f, "qg_opendata", "X_jets", "y", targets, holdout,
                 target_names=[QG_TARGETS[k] for k in targets])


def _inspect_egamma(path, f, holdout) -> Layout:
  if "y" not in f:
    raise _err(path, "y", f"missing labels 'y' for images 'X'; keys found: {sorted(f.keys())}")
  _, shape, _ = _check_images(path, f, "X")
  names = _attr_list(f.attrs, "channel_names")
  if names is None:
    names = _default_channel_names(shape[2], known=(CHANNELS_EGAMMA,))
  return _single(path, f, "egamma", "X", "y", [], holdout, channel_names=names,
                 label_names=_attr_list(f.attrs, "label_names") or ["electron", "photon"])


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


def _validate_labels_h5(path: str, f, layout: Layout) -> None:
  seen = set()
  for spec in layout.splits.values():
    if spec.label_key is None or spec.label_key in seen:
      continue
    seen.add(spec.label_key)
    ds = f[spec.label_key]
    n = ds.shape[0]
    for a in range(0, n, _LABEL_SCAN_ROWS):
      b = min(n, a + _LABEL_SCAN_ROWS)
      if ds.ndim == 2:
        col = ds[a:b, spec.label_column or 0]
      else:
        col = ds[a:b]
      check_label_values(path, spec.label_key, col, a)


# Parquet.


def _is_list_type(t) -> bool:
  import pyarrow as pa

  return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _list_depth_type(t):
  depth = 0
  while _is_list_type(t):
    depth += 1
    t = t.value_type
  return depth, t


def _nested_shape(col, path: str, key: str, row_offset: int) -> tuple[int, int, int]:
  """Shape [a][b][c] of every row in a 3-deep list column; all rows must agree."""
  import pyarrow as pa
  import pyarrow.compute as pc

  if isinstance(col, pa.ChunkedArray):
    col = col.combine_chunks()
  dims = []
  arr = col
  for level in range(3):
    if arr.null_count:
      bad = np.flatnonzero(np.asarray(arr.is_null()))
      raise _err(path, key,
                 f"null nested list at level {level} (first flat position {int(bad[0])})")
    lengths = np.asarray(pc.list_value_length(arr))
    if lengths.size == 0:
      dims.append(0)
    else:
      u = np.unique(lengths)
      if u.size != 1:
        first_bad = int(np.flatnonzero(lengths != lengths[0])[0])
        if level == 0:
          where = f"row {row_offset + first_bad}"
        else:
          where = f"flat position {first_bad} at nesting level {level}"
        raise _err(
            path,
            key,
            f"inconsistent nested shape: level-{level} lists have lengths {u[:6].tolist()} "
            f"(expected all {int(lengths[0])}; first mismatch at {where})",
        )
      dims.append(int(u[0]))
    arr = arr.flatten()
  return tuple(dims)


def _inspect_parquet(path: str, holdout) -> Layout:
  import pyarrow as pa
  import pyarrow.parquet as pq

  try:
    pf = pq.ParquetFile(path)
  except (OSError, pa.ArrowException) as e:
    raise _err(path, None, f"cannot open as parquet (truncated or unreadable?): {e}") from e
  schema = pf.schema_arrow
  names = schema.names
  if "X_jets" not in names:
    raise _err(path, None, "no known parquet layout (expected columns X_jets, y[, m0, pt]); "
               f"columns found: {names}")
  if "y" not in names:
    raise _err(path, "y", f"missing label column 'y'; columns found: {names}")
  depth, leaf = _list_depth_type(schema.field("X_jets").type)
  if depth != 3 or not (pa.types.is_floating(leaf) or pa.types.is_integer(leaf)):
    raise _err(path, "X_jets", "expected 3-deep nested numeric lists [C][H][W], "
               f"got type {schema.field('X_jets').type}")
  n = pf.metadata.num_rows
  if n == 0:
    raise _err(path, "X_jets", "file has no rows")
  # Shape from the first row of the first non-empty row group.
  first = None
  for rg in range(pf.num_row_groups):
    if pf.metadata.row_group(rg).num_rows:
      first = next(pf.iter_batches(batch_size=1, row_groups=[rg], columns=["X_jets"]))
      break
  a, b, c = _nested_shape(first.column(0), path, "X_jets", 0)
  # Public release stores [C][H][W] (3,125,125): channels first when the first
  # axis is small and the last is not.
  if a <= 16 and c > 16:
    channels_first, shape = True, (b, c, a)
  else:
    channels_first, shape = False, (a, b, c)
  targets = [(key, None) for key in QG_TARGETS if key in names]
  tnames = [QG_TARGETS[key] for key, _ in targets]
  for key in ["y"] + [k for k, _ in targets]:
    t = schema.field(key).type
    if _is_list_type(t):
      if _list_depth_type(t)[0] != 1:
        raise _err(path, key, f"expected scalar or length-1 list per row, got type {t}")
    elif not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)):
      raise _err(path, key, f"expected a numeric column, got type {t}")
  # Labels: scan the y column alone (small), row group by row group.
  off = 0
  for rg in range(pf.num_row_groups):
    y = _column_to_numpy(pf.read_row_group(rg, columns=["y"]).column(0), path, "y")
    check_label_values(path, "y", y, off)
    off += len(y)
  splits = {s: SplitSpec("X_jets", "y", None, list(targets), lo, hi)
            for s, (lo, hi) in holdout_ranges(n, holdout).items()}
  cnames = _default_channel_names(shape[2])
  md = pf.schema_arrow.metadata or {}
  if b"channel_names" in md:
    import json

    cn = json.loads(md[b"channel_names"])
    if len(cn) == shape[2]:
      cnames = list(cn)
  return Layout(path, "parquet", shape, cnames, tnames, None, splits, channels_first=channels_first,
                image_dtype=str(leaf))


def _column_to_numpy(col, path, key) -> np.ndarray:
  import pyarrow as pa

  if isinstance(col, pa.ChunkedArray):
    col = col.combine_chunks()
  if _is_list_type(col.type):
    import pyarrow.compute as pc

    lengths = np.asarray(pc.list_value_length(col))
    if lengths.size and not np.all(lengths == 1):
      raise _err(path, key, "expected length-1 lists per row, found lengths "
                 f"{np.unique(lengths)[:6].tolist()}")
    col = col.flatten()
  return col.to_numpy(zero_copy_only=False)


# Chunked readers.


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


def iter_chunks(layout: Layout, split: str, chunk_size: int = 256,
                start: int | None = None) -> Iterator[Chunk]:
  """Yield `Chunk` objects covering `layout.splits[split]` in order."""
  spec = layout.splits[split]
  lo = spec.start if start is None else start
  if layout.format == "parquet":
    yield from _iter_parquet(layout, spec, chunk_size, lo)
    return
  import h5py

  with h5py.File(layout.path, "r") as f:
    img = f[spec.image_key]
    lab = f[spec.label_key] if spec.label_key else None
    tds = [(f[k], c, k if c is None else f"{k}[:,{c}]") for k, c in spec.target_keys]
    tkeys = [t[2] for t in tds]
    for a in range(lo, spec.stop, chunk_size):
      b = min(spec.stop, a + chunk_size)
      try:
        x = _as_f32_images(img[a:b])
      except OSError as e:
        raise _err(layout.path, spec.image_key,
                   f"read error at rows {a}:{b} (truncated file?): {e}") from e
      if lab is not None:
        raw = _label_column(lab[a:b], spec.label_column)
        y = check_label_values(layout.path, spec.label_key, raw, a)
      else:
        y = np.full((b - a,), -1, np.int64)
      if tds:
        cols = []
        for ds, c, _ in tds:
          v = ds[a:b]
          cols.append(v[:, c] if v.ndim == 2 else v)
        t = np.stack(cols, axis=1).astype(np.float32)
      else:
        t = np.zeros((b - a, 0), np.float32)
      yield Chunk(a, x, y, t, tkeys)


def _iter_parquet(layout: Layout, spec: SplitSpec, chunk_size: int, lo: int) -> Iterator[Chunk]:
  import pyarrow.parquet as pq

  pf = pq.ParquetFile(layout.path)
  cols = ["X_jets", "y"] + [k for k, _ in spec.target_keys]
  tkeys = [k for k, _ in spec.target_keys]
  # Row-group boundaries from the footer, to read only the groups overlapping [lo, stop).
  row = 0
  wanted = []
  for rg in range(pf.num_row_groups):
    nrg = pf.metadata.row_group(rg).num_rows
    if row + nrg > lo and row < spec.stop and nrg:
      wanted.append((rg, row))
    row += nrg
  h, w, c = layout.image_shape
  for rg, rg_start in wanted:
    pos = rg_start
    for batch in pf.iter_batches(batch_size=chunk_size, row_groups=[rg], columns=cols):
      bn = batch.num_rows
      a, b = max(pos, lo), min(pos + bn, spec.stop)
      if a < b:
        sub = batch.slice(a - pos, b - a)
        dims = _nested_shape(sub.column(0), layout.path, "X_jets", a)
        expect = (c, h, w) if layout.channels_first else (h, w, c)
        if dims != expect:
          raise _err(layout.path, "X_jets", f"inconsistent nested shape: rows {a}:{b} have "
                     f"{list(dims)}, expected {list(expect)}")
        vals = sub.column(0).flatten().flatten().flatten()
        x = vals.to_numpy(zero_copy_only=False).reshape((b - a,) + dims)
        if layout.channels_first:
          x = x.transpose(0, 2, 3, 1)
        x = _as_f32_images(x)
        y = _column_to_numpy(sub.column(1), layout.path, "y")
        y = check_label_values(layout.path, "y", y, a)
        if tkeys:
          t = np.stack([_column_to_numpy(sub.column(2 + i), layout.path, k)
                        for i, k in enumerate(tkeys)], axis=1).astype(np.float32)
        else:
          t = np.zeros((b - a, 0), np.float32)
        yield Chunk(a, x, y, t, tkeys)
      pos += bn
      if pos >= spec.stop:
        return


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
    raise ValueError("no input files")
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
