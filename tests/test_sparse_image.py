"""--image-encoding sparse: the non-zero pixels on disk, the same images, checksums and batches."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import data_fixtures as F  # noqa: E402

tfds = pytest.importorskip("tensorflow_datasets")

from mae_jax.data import convert as C  # noqa: E402
from mae_jax.data import pipeline as pipeline_lib  # noqa: E402
from mae_jax.data.sparse_image import SparseImage  # noqa: E402


def test_sparse_dataset_is_the_zlib_dataset(tmp_path):
  src = tmp_path / "a.h5"
  d = F.write_e2e_split_h5(src, (12, 4, 4), channels=8)
  x = d["train"]["images"]
  assert (np.signbit(x) & (x == 0)).any()  # -0.0 pixels (signed channels) must survive
  zlib = C.convert([str(src)], str(tmp_path / "zlib"), chunk_size=5)
  sparse = C.convert([str(src)], str(tmp_path / "sparse"), chunk_size=5, image_encoding="sparse")
  assert sparse["image_encoding"] == "sparse" and zlib["image_encoding"] == "zlib"
  assert sparse["splits"] == zlib["splits"] and sparse["channel_stats"] == zlib["channel_stats"]
  C.verify(str(tmp_path / "sparse"))  # sha256 of the images read back: bit-identical
  b = tfds.builder_from_directory(str(tmp_path / "sparse"))
  assert isinstance(b.info.features["image"], SparseImage)
  got = np.stack([r["image"] for r in tfds.as_numpy(b.as_dataset(split="train"))])
  assert got.dtype == np.float32 and got.tobytes() == x.tobytes()
  # The training pipeline reads it unchanged (SkipDecoding + decode_example).
  a, s = (next(pipeline_lib.Pipeline(str(tmp_path / n), "log1p").train_iter("train", 4, seed=0))
          for n in ("zlib", "sparse"))
  assert all(np.array_equal(a[k], s[k]) for k in a)


def test_sparse_image_feature_checks_its_input():
  f = SparseImage((2, 2, 1))
  enc = f.encode_example(np.array([[[0.0], [-0.0]], [[1.5], [0.0]]], np.float32))
  assert np.frombuffer(enc["index"], "<i4").tolist() == [1, 2]
  with pytest.raises(ValueError, match=r"SparseImage\[2, 2, 1\]: got float64 \[2, 2, 1\]"):
    f.encode_example(np.zeros((2, 2, 1)))
  with pytest.raises(ValueError, match="image_encoding='png'"):
    C.convert(["x.h5"], "out", image_encoding="png")
