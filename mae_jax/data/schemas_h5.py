"""HDF5 layouts (`e2e_split`, `ml4sci`, `ml4sci_split`, `qg_opendata`, `egamma`).

Detection from the keys present, validation of names/dtypes/shapes/labels, and
the chunked reader; `mae_jax.data.schemas` dispatches here for non-parquet files.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from mae_jax.data.layouts import (CHANNELS_EGAMMA, QG_TARGETS, SPLITS, Chunk, Layout, SplitSpec,
                                  _as_f32_images, _attr_list, _default_channel_names, _err,
                                  _is_numeric_image_dtype, _label_column, check_label_values,
                                  holdout_ranges)

# Number of rows read at once when scanning a label column.
_LABEL_SCAN_ROWS = 1 << 20


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


def inspect_h5(path: str, format: str, holdout) -> Layout:
  """The layout of the HDF5 file `path` (`format` 'auto' or the name it must have)."""
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


def iter_h5(layout: Layout, spec: SplitSpec, chunk_size: int, lo: int,
            hi: int) -> Iterator[Chunk]:
  """Chunks of rows [lo, hi) of one split of an HDF5 file."""
  import h5py

  with h5py.File(layout.path, "r") as f:
    img = f[spec.image_key]
    lab = f[spec.label_key] if spec.label_key else None
    tds = [(f[k], c, k if c is None else f"{k}[:,{c}]") for k, c in spec.target_keys]
    tkeys = [t[2] for t in tds]
    for a in range(lo, hi, chunk_size):
      b = min(hi, a + chunk_size)
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
