"""Layout detection / validation of the public E2E file formats (no TensorFlow)."""

from __future__ import annotations

import os
import sys

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import data_fixtures as F  # noqa: E402

from mae_jax.data import schemas  # noqa: E402
from mae_jax.errors import DataFormatError  # noqa: E402


def _collect(layout, split, chunk_size=3):
  chunks = list(schemas.iter_chunks(layout, split, chunk_size))
  return (
      np.concatenate([c.images for c in chunks]),
      np.concatenate([c.labels for c in chunks]),
      np.concatenate([c.targets for c in chunks]),
      [c.start for c in chunks],
  )


def test_e2e_split_8ch(tmp_path):
  p = tmp_path / "Boosted_Top.h5"
  d = F.write_e2e_split_h5(p, (5, 3, 2), channels=8)
  assert schemas.detect_format(str(p)) == "e2e_split"
  lay = schemas.inspect_file(str(p))
  assert lay.format == "e2e_split"
  assert lay.image_shape == (125, 125, 8)
  assert lay.channel_names == schemas.CHANNELS_8
  assert lay.target_names == ["jet_mass", "jet_pt"]
  assert lay.image_keys() == {"train": "train_jet", "validation": "validation_jet",
                              "test": "test_jet"}
  assert lay.label_key() is None  # differs per split
  assert lay.splits["train"].label_key == "train_meta" and lay.splits["train"].label_column == 0
  assert lay.target_keys() == ["train_meta[:,1]", "train_meta[:,2]"]
  x, y, t, starts = _collect(lay, "train")
  np.testing.assert_array_equal(x, d["train"]["images"])
  np.testing.assert_array_equal(y, d["train"]["labels"])
  np.testing.assert_array_equal(t, d["train"]["targets"])
  assert starts == [0, 3]


def test_e2e_split_3ch_subset_and_attrs(tmp_path):
  p = tmp_path / "Quark_Gluon.h5"
  F.write_e2e_split_h5(p, (4, None, 2), channels=3, k=4,
                       attrs={"meta_names": ["label", "m", "pt", "eta"],
                              "channel_names": ["Tracks", "ECAL", "HCAL"]})
  lay = schemas.inspect_file(str(p))
  assert set(lay.splits) == {"train", "test"}
  assert lay.image_shape == (125, 125, 3)
  assert lay.channel_names == ["Tracks", "ECAL", "HCAL"]
  assert lay.target_names == ["m", "pt", "eta"]


def test_e2e_split_meta_default_names(tmp_path):
  p = tmp_path / "a.h5"
  F.write_e2e_split_h5(p, (4, 2, 2), channels=3, k=2)
  assert schemas.inspect_file(str(p)).target_names == ["meta_1"]


def test_ml4sci_labelled_and_unlabelled(tmp_path):
  p = tmp_path / "ml4sci.h5"
  d = F.write_ml4sci_h5(p, 7)
  lay = schemas.inspect_file(str(p))
  assert lay.format == "ml4sci" and list(lay.splits) == ["train"]
  assert lay.num_targets == 0
  x, y, _, _ = _collect(lay, "train")
  np.testing.assert_array_equal(y, d["labels"])
  q = tmp_path / "unlab.h5"
  F.write_ml4sci_h5(q, 5, labelled=False)
  lay = schemas.inspect_file(str(q))
  _, y, _, _ = _collect(lay, "train")
  assert (y == -1).all()


def test_ml4sci_split(tmp_path):
  p = tmp_path / "split.h5"
  F.write_ml4sci_split_h5(p, 5, 3)
  lay = schemas.inspect_file(str(p))
  assert lay.format == "ml4sci_split"
  assert {s: v.num_rows for s, v in lay.splits.items()} == {"train": 5, "test": 3}


def test_qg_opendata(tmp_path):
  p = tmp_path / "qg.h5"
  d = F.write_qg_opendata_h5(p, 6)
  lay = schemas.inspect_file(str(p))
  assert lay.format == "qg_opendata"
  assert lay.target_names == ["jet_mass", "jet_pt"] and lay.target_keys() == ["m0", "pt"]
  _, _, t, _ = _collect(lay, "train")
  np.testing.assert_array_equal(t, d["targets"])


def test_egamma(tmp_path):
  p = tmp_path / "eg.h5"
  F.write_egamma_h5(p, 6)
  lay = schemas.inspect_file(str(p))
  assert lay.format == "egamma"
  assert lay.image_shape == (32, 32, 2)
  assert lay.channel_names == ["energy", "time"]
  assert lay.label_names == ["electron", "photon"]


def test_parquet_channels_first_row_groups(tmp_path, monkeypatch):
  import pyarrow.parquet as pq

  p = tmp_path / "qg.parquet"
  d = F.write_qg_parquet(p, 10, row_group_size=4)
  assert pq.ParquetFile(p).num_row_groups == 3
  lay = schemas.inspect_file(str(p))
  assert lay.format == "parquet" and lay.channels_first
  assert lay.image_shape == (125, 125, 3)
  calls = []
  orig = pq.ParquetFile.iter_batches

  def spy(self, *a, **kw):
    calls.append(kw.get("row_groups"))
    return orig(self, *a, **kw)

  def no_full_read(*a, **kw):
    raise AssertionError("whole-file read")

  monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
  monkeypatch.setattr(pq.ParquetFile, "read", no_full_read)
  monkeypatch.setattr(pq, "read_table", no_full_read)
  x, y, t, starts = _collect(lay, "train", chunk_size=3)
  np.testing.assert_array_equal(x, d["images"])
  np.testing.assert_array_equal(y, d["labels"])
  np.testing.assert_array_equal(t, d["targets"])
  assert calls == [[0], [1], [2]]
  assert starts == [0, 3, 4, 7, 8]  # chunks never cross row groups


def test_parquet_holdout_reads_only_needed_groups(tmp_path):
  p = tmp_path / "qg.parquet"
  d = F.write_qg_parquet(p, 10, row_group_size=4)
  lay = schemas.inspect_file(str(p), holdout="0.2,0.2")
  assert {s: (v.start, v.stop) for s, v in lay.splits.items()} == {
      "train": (0, 6), "validation": (6, 8), "test": (8, 10)}
  x, _, _, starts = _collect(lay, "validation")
  np.testing.assert_array_equal(x, d["images"][6:8])
  assert starts == [6, 7]  # row group 1 (rows 4-7) read in batches 4-6 and 7


def test_holdout_ranges():
  assert schemas.holdout_ranges(100, None) == {"train": (0, 100)}
  assert schemas.holdout_ranges(100, (0.1, 0.2)) == {"train": (0, 70), "validation": (70, 80),
                                                      "test": (80, 100)}
  assert schemas.holdout_ranges(10, (0.0, 0.3)) == {"train": (0, 7), "test": (7, 10)}
  with pytest.raises(ValueError):
    schemas.parse_holdout("0.6,0.5")
  with pytest.raises(ValueError):
    schemas.parse_holdout("0.1")


def test_holdout_rejected_for_split_formats(tmp_path):
  p = tmp_path / "a.h5"
  F.write_e2e_split_h5(p, (4, 2, 2), channels=3)
  with pytest.raises(DataFormatError, match="a.h5"):
    schemas.inspect_file(str(p), holdout="0.1,0.1")


# Bad inputs.


def test_missing_file(tmp_path):
  with pytest.raises(DataFormatError, match="nope.h5.*does not exist"):
    schemas.inspect_file(str(tmp_path / "nope.h5"))


def test_truncated_h5(tmp_path):
  p = tmp_path / "trunc.h5"
  F.write_e2e_split_h5(p, (4, 2, 2), channels=3)
  data = p.read_bytes()
  p.write_bytes(data[: len(data) // 3])
  with pytest.raises(DataFormatError, match="trunc.h5.*cannot open as HDF5"):
    schemas.inspect_file(str(p))


def test_unknown_layout_lists_keys(tmp_path):
  p = tmp_path / "odd.h5"
  with h5py.File(p, "w") as f:
    f["images"] = np.zeros((2, 4, 4, 1), np.float32)
    f["labels"] = np.zeros(2)
  with pytest.raises(DataFormatError,
                     match=r"odd.h5.*no known layout.*images \[2, 4, 4, 1\].*labels"):
    schemas.inspect_file(str(p))


def test_wrong_rank(tmp_path):
  p = tmp_path / "rank.h5"
  with h5py.File(p, "w") as f:
    f["jet"] = np.zeros((2, 125, 125), np.float32)
  with pytest.raises(DataFormatError, match=r"rank.h5 key 'jet'.*rank-4.*\[2, 125, 125\]"):
    schemas.inspect_file(str(p))


def test_wrong_dtype(tmp_path):
  p = tmp_path / "dtype.h5"
  with h5py.File(p, "w") as f:
    f["X"] = np.zeros((2, 32, 32, 2), np.complex64)
    f["y"] = np.zeros(2)
  with pytest.raises(DataFormatError, match=r"dtype.h5 key 'X'.*dtype complex64.*\[2, 32, 32, 2\]"):
    schemas.inspect_file(str(p))


def test_channels_first_h5_rejected(tmp_path):
  p = tmp_path / "cf.h5"
  with h5py.File(p, "w") as f:
    f["jet"] = np.zeros((2, 8, 125, 125), np.float32)
  with pytest.raises(DataFormatError, match=r"cf.h5 key 'jet'.*channels-first"):
    schemas.inspect_file(str(p))


def test_length_mismatch(tmp_path):
  p = tmp_path / "len.h5"
  with h5py.File(p, "w") as f:
    f["train_jet"] = np.zeros((4, 125, 125, 3), np.float32)
    f["train_meta"] = np.zeros((3, 3), np.float32)
  with pytest.raises(DataFormatError,
                     match=r"len.h5 key 'train_meta'.*3 rows.*\[3, 3\].*'train_jet' has 4"):
    schemas.inspect_file(str(p))


def test_missing_meta(tmp_path):
  p = tmp_path / "nometa.h5"
  with h5py.File(p, "w") as f:
    f["train_jet"] = np.zeros((4, 125, 125, 3), np.float32)
  with pytest.raises(DataFormatError, match=r"nometa.h5 key 'train_meta'"):
    schemas.inspect_file(str(p))


def test_bad_labels(tmp_path):
  p = tmp_path / "lab.h5"
  with h5py.File(p, "w") as f:
    f["X_jets"] = np.zeros((5, 125, 125, 3), np.float32)
    f["y"] = np.array([0, 1, 2, 1, 0.5], np.float32)
  with pytest.raises(DataFormatError, match=r"lab.h5 key 'y'.*\[0.5, 2.0\].*first at index 2"):
    schemas.inspect_file(str(p))


def test_wrong_format_requested(tmp_path):
  p = tmp_path / "eg.h5"
  F.write_egamma_h5(p, 3)
  with pytest.raises(DataFormatError, match="requested format 'qg_opendata'.*egamma"):
    schemas.inspect_file(str(p), format="qg_opendata")


def test_ragged_parquet(tmp_path):
  p = tmp_path / "ragged.parquet"
  F.write_ragged_parquet(p)
  lay = schemas.inspect_file(str(p))  # first row is fine
  with pytest.raises(DataFormatError,
                     match=r"ragged.parquet key 'X_jets'.*inconsistent nested shape"):
    list(schemas.iter_chunks(lay, "train", 4))


def test_parquet_missing_columns(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  p = tmp_path / "cols.parquet"
  pq.write_table(pa.table({"a": [1.0], "b": [2.0]}), p)
  with pytest.raises(DataFormatError, match=r"cols.parquet.*columns found: \['a', 'b'\]"):
    schemas.inspect_file(str(p))


def test_channel_mismatch_across_files(tmp_path):
  a, b = tmp_path / "a.h5", tmp_path / "b.h5"
  F.write_e2e_split_h5(a, (3, 2, 2), channels=8)
  F.write_e2e_split_h5(b, (3, 2, 2), channels=3)
  la, lb = schemas.inspect_file(str(a)), schemas.inspect_file(str(b))
  with pytest.raises(DataFormatError, match=r"channel count.*a.h5 key 'train_jet'.*\[125, 125, 8\]"
                                            r".*b.h5.*\[125, 125, 3\]"):
    schemas.check_compatible([la, lb])


def test_labels_mismatch_across_files(tmp_path):
  a, b = tmp_path / "a.h5", tmp_path / "b.h5"
  F.write_ml4sci_h5(a, 3)
  F.write_ml4sci_h5(b, 3, labelled=False)
  la, lb = schemas.inspect_file(str(a)), schemas.inspect_file(str(b))
  with pytest.raises(DataFormatError, match=r"disagree on labels: a.h5 key 'jet' has labels but "
                                            r"b.h5 key 'jet' has no labels"):
    schemas.check_compatible([la, lb])


def test_holdout_refused_for_split_formats(tmp_path):
  p = tmp_path / "split.h5"
  F.write_e2e_split_h5(p, (3, 2, 2), channels=3)
  with pytest.raises(DataFormatError, match="holdout is only for single-split formats; "
                                            "this e2e_split file"):
    schemas.inspect_file(str(p), holdout="0.1,0.1")
