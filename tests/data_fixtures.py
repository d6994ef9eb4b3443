"""Writers of tiny files in exactly the public E2E layouts (reusable by other tests).

Every writer returns the arrays it wrote (numpy, channels-last images) so a
test can compare a conversion bit for bit. Images are sparse (about 3% of
pixels non-zero), non-negative except the d0/dz-like channels, float32.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "validation", "test")


def sparse_images(n: int, h: int = 125, w: int = 125, c: int = 8, seed: int = 0,
                  frac: float = 0.03) -> np.ndarray:
  rng = np.random.default_rng(seed)
  x = np.zeros((n, h, w, c), np.float32)
  mask = rng.random((n, h, w, c)) < frac
  x[mask] = rng.exponential(2.0, size=int(mask.sum())).astype(np.float32)
  if c == 8:  # signed impact-parameter channels
    x[..., 1:3] *= np.where(rng.random((n, h, w, 2)) < 0.5, -1.0, 1.0).astype(np.float32)
  return x


def write_e2e_split_h5(path, n_per_split=(8, 4, 4), channels: int = 8, seed: int = 0, k: int = 3,
                       splits=SPLITS, attrs: dict | None = None) -> dict:
  """`{split}_jet` [N,125,125,C] + `{split}_meta` [N,k] (label in column 0)."""
  import h5py

  rng = np.random.default_rng(seed)
  out = {}
  with h5py.File(path, "w") as f:
    for i, (s, n) in enumerate(zip(splits, n_per_split)):
      if n is None:
        continue
      x = sparse_images(n, c=channels, seed=seed * 100 + i)
      meta = np.zeros((n, k), np.float32)
      meta[:, 0] = rng.integers(0, 2, n)
      if k > 1:
        meta[:, 1:] = rng.normal(100.0, 20.0, (n, k - 1)).astype(np.float32)
      f.create_dataset(f"{s}_jet", data=x)
      f.create_dataset(f"{s}_meta", data=meta)
      out[s] = {"images": x, "labels": meta[:, 0].astype(np.int64), "targets": meta[:, 1:]}
    for a, v in (attrs or {}).items():
      f.attrs[a] = v
  return out


def write_ml4sci_h5(path, n: int = 10, labelled: bool = True, seed: int = 0) -> dict:
  """`jet` [N,125,125,8] with `Y` [N,1] (or unlabelled: `jet` alone)."""
  import h5py

  rng = np.random.default_rng(seed)
  x = sparse_images(n, c=8, seed=seed)
  y = rng.integers(0, 2, (n, 1)).astype(np.float32)
  with h5py.File(path, "w") as f:
    f.create_dataset("jet", data=x)
    if labelled:
      f.create_dataset("Y", data=y)
  return {"images": x, "labels": y[:, 0].astype(np.int64) if labelled else np.full(n, -1, np.int64)}


def write_ml4sci_split_h5(path, n_train: int = 8, n_test: int = 4, seed: int = 0) -> dict:
  """`X_train`, `X_test` [N,125,125,8], `Y_train`, `Y_test` [N,1]."""
  import h5py

  rng = np.random.default_rng(seed)
  out = {}
  with h5py.File(path, "w") as f:
    for i, (s, n) in enumerate((("train", n_train), ("test", n_test))):
      x = sparse_images(n, c=8, seed=seed * 100 + i)
      y = rng.integers(0, 2, (n, 1)).astype(np.float32)
      f.create_dataset(f"X_{s}", data=x)
      f.create_dataset(f"Y_{s}", data=y)
      out[s] = {"images": x, "labels": y[:, 0].astype(np.int64)}
  return out


def write_qg_opendata_h5(path, n: int = 10, seed: int = 0) -> dict:
  """`X_jets` [N,125,125,3], `y` [N], `m0` [N], `pt` [N]."""
  import h5py

  rng = np.random.default_rng(seed)
  x = sparse_images(n, c=3, seed=seed)
  y = rng.integers(0, 2, n).astype(np.float32)
  m0 = rng.normal(15.0, 5.0, n).astype(np.float32)
  pt = rng.normal(90.0, 20.0, n).astype(np.float32)
  with h5py.File(path, "w") as f:
    f.create_dataset("X_jets", data=x)
    f.create_dataset("y", data=y)
    f.create_dataset("m0", data=m0)
    f.create_dataset("pt", data=pt)
  return {"images": x, "labels": y.astype(np.int64), "targets": np.stack([m0, pt], 1)}


def write_egamma_h5(path, n: int = 12, seed: int = 0) -> dict:
  """`X` [N,32,32,2] (energy, time), `y` [N] (electron = 0)."""
  import h5py

  rng = np.random.default_rng(seed)
  x = sparse_images(n, 32, 32, 2, seed=seed, frac=0.1)
  y = rng.integers(0, 2, n).astype(np.float32)
  with h5py.File(path, "w") as f:
    f.create_dataset("X", data=x)
    f.create_dataset("y", data=y)
  return {"images": x, "labels": y.astype(np.int64)}


def write_qg_parquet(path, n: int = 10, row_group_size: int = 4, seed: int = 0,
                     dtype=np.float64) -> dict:
  """Parquet with `X_jets` as nested lists [3][125][125] (channels-first), `y`, `m0`, `pt`.

  `dtype` is the stored leaf type (the public release uses doubles). The
  returned `images` are channels-last float32, as the converter outputs.
  """
  import pyarrow as pa
  import pyarrow.parquet as pq

  rng = np.random.default_rng(seed)
  x = sparse_images(n, c=3, seed=seed)  # [N,H,W,C]
  if dtype != np.float32:
    x = x.astype(dtype).astype(np.float32)  # values exactly representable either way
  y = rng.integers(0, 2, n).astype(np.float64)
  m0 = rng.normal(15.0, 5.0, n)
  pt = rng.normal(90.0, 20.0, n)
  cf = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(dtype)  # [N,C,H,W]
  xj = _nested_list_array(cf)
  table = pa.table({"X_jets": xj, "y": y, "m0": m0, "pt": pt})
  pq.write_table(table, path, row_group_size=row_group_size)
  return {
      "images": x,
      "labels": y.astype(np.int64),
      "targets": np.stack([m0, pt], 1).astype(np.float32),
  }


def _nested_list_array(arr: np.ndarray):
  """[N,A,B,C] numpy -> pyarrow list<list<list<leaf>>> without Python loops."""
  import pyarrow as pa

  n, a, b, c = arr.shape
  leaf = pa.array(arr.reshape(-1))
  l3 = pa.ListArray.from_arrays(pa.array(np.arange(0, n * a * b * c + 1, c, dtype=np.int32)), leaf)
  l2 = pa.ListArray.from_arrays(pa.array(np.arange(0, n * a * b + 1, b, dtype=np.int32)), l3)
  return pa.ListArray.from_arrays(pa.array(np.arange(0, n * a + 1, a, dtype=np.int32)), l2)


def write_ragged_parquet(path, seed: int = 0):
  """A parquet whose second row has a [3][125][124] image (inconsistent nesting)."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  good = sparse_images(1, c=3, seed=seed).transpose(0, 3, 1, 2)[0].astype(np.float64)
  rows = [good.tolist(), good[:, :, :124].tolist()]
  table = pa.table({"X_jets": rows, "y": [0.0, 1.0], "m0": [1.0, 2.0], "pt": [3.0, 4.0]})
  pq.write_table(table, path)
