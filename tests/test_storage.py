"""Storage baselines: lossless round trips, byte counts equal to the encoded lengths,
top-k and float16 doing what they say."""

import zlib

import numpy as np
import pytest

from data_fixtures import sparse_images
from mae_jax.evaluate import storage


@pytest.fixture(scope="module")
def images():
  return sparse_images(4, h=20, w=20, c=3, seed=1, frac=0.05)


@pytest.mark.parametrize("codec", storage.CODECS)
@pytest.mark.parametrize("delta", [False, True])
def test_sparse_float32_round_trips_exactly(images, codec, delta):
  s = storage.sparse(images, "float32", codec, delta=delta)
  assert s.lossless and np.array_equal(s.decoded, images)
  assert s.decoded.dtype == np.float32


def test_delta_indices_are_differences(images):
  raw = np.frombuffer(storage.encode_sparse(images[0]), "<u2")
  dlt = np.frombuffer(storage.encode_sparse(images[0], delta=True), "<u2")
  n = int((images[0] != 0).sum())
  assert np.array_equal(raw[:n], np.flatnonzero(images[0]))
  assert np.array_equal(dlt[:n], np.diff(np.flatnonzero(images[0]), prepend=0))
  assert np.array_equal(raw[n:], dlt[n:])  # same values


def test_byte_counts_are_the_encoded_lengths(images):
  nz = (images != 0).sum((1, 2, 3))
  raw = storage.sparse(images, "float32")
  # 20*20*3 = 1200 pixels: uint16 indices + float32 values = 6 bytes a pixel, no header
  assert raw.bytes_per_jet.tolist() == (6 * nz).tolist()
  assert storage.sparse(images, "float16").bytes_per_jet.tolist() == (4 * nz).tolist()
  z = storage.sparse(images, "float32", "zlib")
  ref = [len(zlib.compress(storage.encode_sparse(im), 6)) for im in images]
  assert z.bytes_per_jet.tolist() == ref
  if "zstd" in storage.CODECS:
    import zstandard
    zs = storage.sparse(images, "float16", "zstd")
    ref = [len(zstandard.ZstdCompressor(level=3).compress(storage.encode_sparse(im, "float16")))
           for im in images]
    assert zs.bytes_per_jet.tolist() == ref
  d = storage.dense_float16(images)
  assert d.bytes_per_jet.tolist() == [20 * 20 * 3 * 2] * 4
  assert raw.mean_bytes == pytest.approx(6 * nz.mean())


def test_uint32_indices_beyond_65536_pixels():
  x = np.zeros((1, 125, 125, 8), np.float32)
  x[0, 124, 124, 7] = 3.5  # flat index 124,999 needs uint32
  x[0, 0, 0, 0] = -1.25
  s = storage.sparse(x, "float32")
  assert s.bytes_per_jet.tolist() == [2 * (4 + 4)] and np.array_equal(s.decoded, x)


def test_float16_is_the_numpy_cast(images):
  for s in (storage.sparse(images, "float16", storage.CODECS[-1]), storage.dense_float16(images)):
    assert not s.lossless
    np.testing.assert_array_equal(s.decoded, images.astype(np.float16).astype(np.float32))


def test_top_k_keeps_the_largest_pixels(images):
  k = 5
  s = storage.sparse(images, "float32", "zlib", top_k=k)
  for im, dec in zip(images, s.decoded):
    kept = dec != 0
    assert kept.sum() == k
    assert np.array_equal(dec[kept], im[kept])  # kept pixels exact in float32
    assert np.abs(im[~kept]).max() <= np.abs(im[kept]).min()
  assert storage.sparse(images, top_k=10**6).lossless is False  # k beyond n: all kept
  np.testing.assert_array_equal(storage.sparse(images, top_k=10**6).decoded, images)


def test_bad_arguments(images):
  with pytest.raises(ValueError, match="codec 'lz4'"):
    storage.sparse(images, codec="lz4")
  with pytest.raises(ValueError, match="value_dtype 'int8'"):
    storage.sparse(images, "int8")
  with pytest.raises(ValueError, match="not a whole number"):
    storage.decode_sparse(b"\x00" * 7, (20, 20, 3))
  with pytest.raises(ValueError, match="index 1200 beyond the 1200 pixels"):
    storage.decode_sparse(np.array([1200], "<u2").tobytes() + b"\x00" * 4, (20, 20, 3))
  names = [s.name for s in storage.baselines(images, top_k=(8,))]
  assert "sparse float32" in names and "dense float16" in names and len(set(names)) == len(names)


def test_storage_fidelity_benchmark_runs_on_a_converted_split(tmp_path, capsys, monkeypatch):
  """benchmarks/storage_fidelity.py end to end on a tiny converted dataset: one row per
  baseline, lossless rows with response 1 and resolution 0."""
  import importlib.util
  import pathlib
  import sys
  import helpers
  data = helpers.converted_dataset(tmp_path, n=(4, 4, 6))
  path = pathlib.Path(__file__).parent.parent / "benchmarks" / "storage_fidelity.py"
  spec = importlib.util.spec_from_file_location("storage_fidelity", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  monkeypatch.setattr(sys, "argv", ["storage_fidelity.py", "--data_dir", data, "--top_k", "8"])
  bench.main()
  out = capsys.readouterr().out
  rows = [line for line in out.splitlines() if line.startswith("| sparse") or
          line.startswith("| dense")]
  assert len(rows) == len(storage.baselines(np.zeros((1, 5, 5, 3), np.float32), top_k=(8,)))
  assert "6 jets of split 'test'" in out
  lossless = [r for r in rows if "| yes |" in r]
  assert lossless and all("| 1.0000 | 0.00e+00 (0.00e+00) | 1.0000 | 0.00e+00" in r
                          for r in lossless)
