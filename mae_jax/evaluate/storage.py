"""Storage baselines in bytes per jet: what a compressed representation must beat.

CMS stores zero-suppressed data, not dense images, so the honest reference for a latent's
size is a sparse record of the same jet. Each baseline encodes every jet of raw images
[B, H, W, C] to its own byte string, decodes it back, and returns both sizes and decoded
images (`Stored`), so the lossy ones can be scored with `fidelity`:

  sparse      zero-suppressed pixels: the flat (h, w, c) indices of the non-zero pixels
              (uint16 where H*W*C <= 65,536, else uint32) followed by their values
              (float32: lossless; float16: lossy), optionally compressed (zlib, zstd)
  top-k       the same keeping only the k pixels of largest |value| per jet (lossy)
  dense fp16  the whole image quantised to float16 (lossy), optionally compressed

With `delta=True` the indices are stored as differences from the previous one (the first
as is): same size raw, but mostly small numbers, which the codecs compress far better.
Record layout: [indices][values], no header (the pixel count follows from the length;
the shape and dtypes are fixed per dataset). Sizes are len() of the final byte strings.
zstd needs the `zstandard` package; `CODECS` lists what this installation offers.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

try:
  import zstandard
except ImportError:  # optional: zlib alone then
  zstandard = None

CODECS = ("none", "zlib") + (("zstd",) if zstandard is not None else ())
VALUE_DTYPES = ("float32", "float16")


@dataclasses.dataclass
class Stored:
  name: str
  bytes_per_jet: np.ndarray  # [B] int64: len() of each jet's record
  decoded: np.ndarray  # [B, H, W, C] float32
  lossless: bool

  @property
  def mean_bytes(self) -> float:
    return float(self.bytes_per_jet.mean())


def compress(blob: bytes, codec: str, level: int | None = None) -> bytes:
  if codec == "none":
    return blob
  if codec == "zlib":
    return zlib.compress(blob, 6 if level is None else level)
  if codec == "zstd" and zstandard is not None:
    return zstandard.ZstdCompressor(level=3 if level is None else level).compress(blob)
  raise ValueError(f"codec {codec!r} not available here (have {CODECS})")


def decompress(blob: bytes, codec: str) -> bytes:
  if codec == "none":
    return blob
  if codec == "zlib":
    return zlib.decompress(blob)
  if codec == "zstd" and zstandard is not None:
    return zstandard.ZstdDecompressor().decompress(blob)
  raise ValueError(f"codec {codec!r} not available here (have {CODECS})")


def _index_dtype(size):
  return np.dtype("<u2") if size <= 2**16 else np.dtype("<u4")


def _check(images, value_dtype, codec):
  x = np.asarray(images)
  if x.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {x.shape}")
  if value_dtype not in VALUE_DTYPES:
    raise ValueError(f"value_dtype {value_dtype!r} not one of {VALUE_DTYPES}")
  if codec not in CODECS:
    raise ValueError(f"codec {codec!r} not available here (have {CODECS})")
  return x


def encode_sparse(image, value_dtype: str = "float32", top_k: int | None = None,
                  delta: bool = False) -> bytes:
  """One jet [H, W, C] -> [flat indices][values] of its non-zero (or top-k |value|) pixels,
  in increasing index order (which the codecs like); delta: index differences."""
  flat = np.asarray(image, np.float32).reshape(-1)
  idx = np.flatnonzero(flat)
  if top_k is not None and len(idx) > top_k:
    # stable: among equal |values| the lower index wins, so encoding is deterministic
    order = np.argsort(-np.abs(flat[idx]), kind="stable")[:top_k]
    idx = np.sort(idx[order])
  vals = flat[idx].astype("<f4" if value_dtype == "float32" else "<f2")
  stored = np.diff(idx, prepend=0) if delta else idx
  return stored.astype(_index_dtype(flat.size)).tobytes() + vals.tobytes()


def decode_sparse(blob: bytes, shape, value_dtype: str = "float32",
                  delta: bool = False) -> np.ndarray:
  """Inverse of encode_sparse: the image [H, W, C] float32."""
  size = int(np.prod(shape))
  it, vt = _index_dtype(size), np.dtype("<f4" if value_dtype == "float32" else "<f2")
  n, rest = divmod(len(blob), it.itemsize + vt.itemsize)
  if rest:
    raise ValueError(f"sparse record of {len(blob)} bytes is not a whole number of "
                     f"({it}, {vt}) pixels")
  idx = np.frombuffer(blob, it, n)
  if delta:
    idx = np.cumsum(idx, dtype=np.int64)
  if n and idx.max() >= size:
    raise ValueError(f"sparse record holds pixel index {int(idx.max())} beyond the "
                     f"{size} pixels of shape {tuple(shape)}")
  vals = np.frombuffer(blob, vt, n, offset=n * it.itemsize)
  out = np.zeros(size, np.float32)
  out[idx] = vals.astype(np.float32)
  return out.reshape(shape)


def sparse(images, value_dtype: str = "float32", codec: str = "none",
           top_k: int | None = None, delta: bool = False) -> Stored:
  """Zero-suppressed storage (all non-zero pixels, or the top_k of largest |value|)."""
  x = _check(images, value_dtype, codec)
  blobs = [compress(encode_sparse(im, value_dtype, top_k, delta), codec) for im in x]
  decoded = np.stack([decode_sparse(decompress(b, codec), x.shape[1:], value_dtype, delta)
                      for b in blobs]) if len(x) else np.zeros(x.shape, np.float32)
  name = f"sparse {value_dtype}" + (" delta" if delta else "") + \
         (f" top-{top_k}" if top_k else "") + ("" if codec == "none" else f" + {codec}")
  lossless = value_dtype == "float32" and top_k is None
  return Stored(name, np.array([len(b) for b in blobs], np.int64), decoded, lossless)


def dense_float16(images, codec: str = "none") -> Stored:
  """The whole image as little-endian float16 (lossy quantisation)."""
  x = _check(images, "float16", codec)
  blobs = [compress(np.asarray(im, "<f2").tobytes(), codec) for im in x]
  decoded = np.stack([np.frombuffer(decompress(b, codec), "<f2").astype(np.float32)
                      .reshape(x.shape[1:]) for b in blobs]) if len(x) else \
      np.zeros(x.shape, np.float32)
  name = "dense float16" + ("" if codec == "none" else f" + {codec}")
  return Stored(name, np.array([len(b) for b in blobs], np.int64), decoded, False)


def baselines(images, top_k=(16, 32, 64, 128), codecs=None) -> list[Stored]:
  """The standard grid: sparse float32/float16 with every codec, and with delta indices
  for every real codec, top-k (float16, delta, each real codec) for each k, dense float16
  with every codec. top-k ranks |value| across channels, whatever their units."""
  codecs = tuple(codecs or CODECS)
  packed = [c for c in codecs if c != "none"]
  out = [sparse(images, vt, c) for vt in VALUE_DTYPES for c in codecs]
  out += [sparse(images, vt, c, delta=True) for vt in VALUE_DTYPES for c in packed]
  out += [sparse(images, "float16", c, top_k=k, delta=True) for k in top_k for c in packed]
  out += [dense_float16(images, c) for c in codecs]
  return out
