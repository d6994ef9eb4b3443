"""End-to-end tests of mae_jax.data.convert: HDF5/parquet -> TFDS (TFRecord) -> read back."""

from __future__ import annotations

import errno
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import data_fixtures as F  # noqa: E402

tfds = pytest.importorskip("tensorflow_datasets")

from mae_jax import errors, workdir_lock  # noqa: E402
from mae_jax.data import builder as B  # noqa: E402
from mae_jax.data import convert as C  # noqa: E402
from mae_jax.data import meta as meta_lib  # noqa: E402
from mae_jax.errors import DataFormatError, NonFiniteError, VerificationError  # noqa: E402


def read_split(out, split):
  b = tfds.builder_from_directory(str(out))
  recs = list(tfds.as_numpy(b.as_dataset(split=split, shuffle_files=False)))
  res = {
      "images": np.stack([r["image"] for r in recs]),
      "labels": np.array([r["label"] for r in recs]),
      "index": np.array([r["index"] for r in recs]),
      "source": np.array([r["source"] for r in recs]),
  }
  if "targets" in recs[0]:
    res["targets"] = np.stack([r["targets"] for r in recs])
  return res


def assert_same(got, want, rows=None):
  sl = slice(None) if rows is None else rows
  assert got["images"].dtype == np.float32
  np.testing.assert_array_equal(got["images"], want["images"][sl])
  # bit-identical
  assert got["images"].tobytes() == np.ascontiguousarray(want["images"][sl]).tobytes()
  np.testing.assert_array_equal(got["labels"], want["labels"][sl])
  if "targets" in want:
    want_targets = np.ascontiguousarray(want["targets"][sl], dtype=np.float32)
    assert got["targets"].tobytes() == want_targets.tobytes()


def no_leftovers(tmp_path, name="out"):
  return not [p for p in os.listdir(tmp_path)
              if p.startswith(name + ".partial") or p.startswith(name + ".old")]


# Round trips per format.


def test_e2e_split_roundtrip_and_verify(tmp_path):
  src = tmp_path / "Boosted_Top.h5"
  d = F.write_e2e_split_h5(src, (8, 4, 4), channels=8)
  out = tmp_path / "out"
  meta = C.convert([str(src)], str(out), chunk_size=3)
  assert no_leftovers(tmp_path)
  assert sorted(os.listdir(out)) == sorted(
      ["dataset_info.json", "features.json", meta_lib.META_FILE]
      + [f"mae_jax_converted-{s}.tfrecord-00000-of-00001" for s in ("train", "validation", "test")]
  )
  assert meta == meta_lib.load_meta(out)
  assert meta["log1p_definition"].startswith(meta_lib.FORMULAS["log1p"])
  assert meta["format"] == "e2e_split"
  assert meta["inputs"] == [str(src)]
  assert meta["image_shape"] == [125, 125, 8]
  assert meta["channel_names"][:3] == ["track_pt", "track_d0", "track_dz"]
  assert meta["target_names"] == ["jet_mass", "jet_pt"]
  for s, n in (("train", 8), ("validation", 4), ("test", 4)):
    got = read_split(out, s)
    assert_same(got, d[s])
    np.testing.assert_array_equal(got["index"], np.arange(n))
    assert (got["source"] == 0).all()
    sm = meta["splits"][s]
    assert sm["num_examples"] == sm["num_input"] == n and sm["num_dropped"] == 0
    values, counts = np.unique(d[s]["labels"], return_counts=True)
    assert sm["label_counts"] == {str(k): int(v) for k, v in zip(values, counts)}
    image_sum = d[s]["images"].sum(axis=(0, 1, 2), dtype=np.float64)
    np.testing.assert_allclose(sm["image_sum"], image_sum, rtol=1e-12)
    np.testing.assert_allclose(sm["target_sum"], d[s]["targets"].sum(axis=0, dtype=np.float64),
                               rtol=1e-12)
  # channel statistics on train, float64
  x = d["train"]["images"].astype(np.float64).reshape(-1, 8)
  cs = meta["channel_stats"]
  assert meta["channel_stats_split"] == "train"
  np.testing.assert_allclose(cs["mean"], x.mean(0), rtol=1e-9)
  np.testing.assert_allclose(cs["std"], x.std(0), rtol=1e-7)
  np.testing.assert_allclose(cs["max"], x.max(0))
  np.testing.assert_allclose(cs["nonzero_frac"], (x != 0).mean(0))
  lg = np.sign(x) * np.log1p(np.abs(x))
  np.testing.assert_allclose(cs["log1p_mean"], lg.mean(0), rtol=1e-9)
  np.testing.assert_allclose(cs["log1p_std"], lg.std(0), rtol=1e-7)
  # features contract
  feats = tfds.builder_from_directory(str(out)).info.features
  assert set(feats.keys()) == {"image", "label", "targets", "index", "source"}
  assert feats["image"].shape == (125, 125, 8) and feats["targets"].shape == (2,)
  assert set(C.verify(str(out))) == {"train", "validation", "test"}


@pytest.mark.parametrize("kind", ["ml4sci", "ml4sci_unlabelled", "ml4sci_split", "qg_opendata",
                                  "egamma"])
def test_single_formats_roundtrip(tmp_path, kind):
  src = tmp_path / f"{kind}.h5"
  if kind == "ml4sci":
    d = {"train": F.write_ml4sci_h5(src, 7)}
  elif kind == "ml4sci_unlabelled":
    d = {"train": F.write_ml4sci_h5(src, 6, labelled=False)}
  elif kind == "ml4sci_split":
    d = F.write_ml4sci_split_h5(src, 6, 3)
  elif kind == "qg_opendata":
    d = {"train": F.write_qg_opendata_h5(src, 6)}
  else:
    d = {"train": F.write_egamma_h5(src, 9)}
  out = tmp_path / "out"
  meta = C.convert([str(src)], str(out), chunk_size=4)
  assert meta["format"] == kind.replace("_unlabelled", "")
  assert set(meta["splits"]) == set(d)
  feats = tfds.builder_from_directory(str(out)).info.features
  assert ("targets" in feats) == (kind == "qg_opendata")
  for s in d:
    assert_same(read_split(out, s), d[s])
  if kind == "ml4sci_unlabelled":
    assert meta["splits"]["train"]["label_counts"] == {"-1": 6}
  if kind == "egamma":
    assert meta["image_shape"] == [32, 32, 2] and meta["label_names"] == ["electron", "photon"]
  C.verify(str(out))


def test_parquet_roundtrip_by_row_groups(tmp_path, monkeypatch):
  import pyarrow.parquet as pq

  src = tmp_path / "qg.parquet"
  d = F.write_qg_parquet(src, 10, row_group_size=3)
  assert pq.ParquetFile(src).num_row_groups == 4
  seen = []
  orig = pq.ParquetFile.iter_batches

  def spy(self, *a, **kw):
    seen.append(kw.get("row_groups"))
    return orig(self, *a, **kw)

  monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
  monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("whole parquet read"))
  out = tmp_path / "out"
  meta = C.convert([str(src)], str(out), chunk_size=2)
  assert [r for r in seen if r is not None and len(r) == 1][-4:] == [[0], [1], [2], [3]]
  assert meta["format"] == "parquet" and meta["image_shape"] == [125, 125, 3]
  got = read_split(out, "train")
  assert_same(got, d)  # channels-first nested lists -> channels-last
  C.verify(str(out))


def class_sorted_egamma(path, n0, n1):
  """An egamma file sorted by class (n0 label-0 jets, then n1 label-1 jets), as one gets by
  concatenating a background and a signal file."""
  d = F.write_egamma_h5(path, n0 + n1)
  d["labels"] = np.r_[np.zeros(n0), np.ones(n1)].astype(np.int64)
  with h5py.File(path, "a") as f:
    f["y"][...] = d["labels"].astype(np.float32)
  return d


def test_holdout_is_a_seeded_stratified_permutation(tmp_path):
  src = tmp_path / "sorted.h5"
  d = class_sorted_egamma(src, 40, 27)
  meta = C.convert([str(src)], str(tmp_path / "a"), holdout="0.15,0.2", chunk_size=7)
  assert meta["holdout"] == [0.15, 0.2] and meta["split_seed"] == 0
  got = {s: read_split(tmp_path / "a", s) for s in ("train", "validation", "test")}
  for s, frac in (("validation", 0.15), ("test", 0.2)):
    for c, n_c in ((0, 40), (1, 27)):  # both classes, each within one jet of its fraction
      assert abs(int(np.sum(got[s]["labels"] == c)) - frac * n_c) <= 1, (s, c)
  for s, g in got.items():  # source order inside a split; the records are the source rows
    assert np.all(np.diff(g["index"]) > 0)
    assert_same(g, d, g["index"])
    assert meta["splits"][s]["num_examples"] == g["index"].size
  union = np.concatenate([g["index"] for g in got.values()])
  np.testing.assert_array_equal(np.sort(union), np.arange(67))  # nothing lost or duplicated
  again = C.convert([str(src)], str(tmp_path / "b"), holdout="0.15,0.2", chunk_size=3)
  assert again["splits"] == meta["splits"]  # same seed: same rows, counts and sha256
  other = C.convert([str(src)], str(tmp_path / "c"), holdout="0.15,0.2", split_seed=1)
  assert other["split_seed"] == 1
  assert other["splits"]["test"]["sha256"] != meta["splits"]["test"]["sha256"]
  C.verify(str(tmp_path / "a"))


def test_holdout_with_a_single_class_split_is_a_one_line_error(tmp_path):
  src = tmp_path / "sorted.h5"
  class_sorted_egamma(src, 30, 3)  # round(0.1 * 3) = 0 label-1 jets to hold out
  with pytest.raises(DataFormatError, match=r"split 'validation' holds one class only "
                     r"\(label counts \{'0': 3\}\)") as e:
    C.convert([str(src)], str(tmp_path / "out"), holdout="0.1,0.1")
  assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


# Multi-file.


def test_multi_file_concatenation(tmp_path):
  a, b = tmp_path / "a.h5", tmp_path / "b.h5"
  da = F.write_e2e_split_h5(a, (5, 2, 2), channels=3, seed=1)
  db = F.write_e2e_split_h5(b, (4, None, 3), channels=3, seed=2)
  out = tmp_path / "out"
  meta = C.convert([str(a), str(b)], str(out), chunk_size=3)
  assert meta["inputs"] == [str(a), str(b)]
  got = read_split(out, "train")
  want = {k: np.concatenate([da["train"][k], db["train"][k]])
          for k in ("images", "labels", "targets")}
  assert_same(got, want)
  np.testing.assert_array_equal(got["source"], [0] * 5 + [1] * 4)
  np.testing.assert_array_equal(got["index"], list(range(5)) + list(range(4)))
  assert meta["splits"]["validation"]["num_examples"] == 2  # only in a.h5
  assert meta["splits"]["test"]["num_examples"] == 5
  C.verify(str(out))


def test_multi_file_channel_mismatch(tmp_path):
  a, b = tmp_path / "top8.h5", tmp_path / "qg3.h5"
  F.write_e2e_split_h5(a, (3, 2, 2), channels=8)
  F.write_e2e_split_h5(b, (3, 2, 2), channels=3)
  with pytest.raises(DataFormatError, match=r"top8.h5.*\[125, 125, 8\].*qg3.h5.*\[125, 125, 3\]"):
    C.convert([str(a), str(b)], str(tmp_path / "out"))
  assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_multi_file_format_mismatch(tmp_path):
  a, b = tmp_path / "qg.h5", tmp_path / "ml.h5"
  F.write_qg_opendata_h5(a, 3)
  F.write_ml4sci_h5(b, 3)
  with pytest.raises(DataFormatError, match="qg.h5.*qg_opendata.*ml.h5.*ml4sci"):
    C.convert([str(a), str(b)], str(tmp_path / "out"))


# NaN / bad indices.


def _e2e_with_nans(path):
  d = F.write_e2e_split_h5(path, (10, 3, 3), channels=3)
  with h5py.File(path, "a") as f:
    x = f["train_jet"]
    row = x[2]
    row[5, 5, 1] = np.nan
    x[2] = row
    row = x[7]
    row[0, 0, 0] = np.inf
    x[7] = row
    m = f["test_meta"][...]
    m[1, 2] = np.nan
    f["test_meta"][...] = m
  return d


def test_nan_reject_names_file_key_index(tmp_path):
  src = tmp_path / "nan.h5"
  _e2e_with_nans(src)
  out = tmp_path / "out"
  with pytest.raises(NonFiniteError,
                     match=r"nan.h5 key 'train_jet' \(split 'train'\): 2 images .* \[2, 7\]"):
    C.convert([str(src)], str(out), chunk_size=4)
  assert not out.exists() and no_leftovers(tmp_path)


def test_nan_drop_recorded(tmp_path):
  src = tmp_path / "nan.h5"
  d = _e2e_with_nans(src)
  out = tmp_path / "out"
  meta = C.convert([str(src)], str(out), nan_policy="drop", chunk_size=4)
  tr = meta["splits"]["train"]
  assert tr["num_input"] == 10 and tr["num_examples"] == 8 and tr["num_dropped"] == 2
  assert tr["dropped_indices"] == [[0, 2], [0, 7]]
  te = meta["splits"]["test"]
  assert te["num_examples"] == 2 and te["dropped_indices"] == [[0, 1]]
  keep = [i for i in range(10) if i not in (2, 7)]
  got = read_split(out, "train")
  assert_same(got, d["train"], keep)
  np.testing.assert_array_equal(got["index"], keep)
  assert np.isfinite(meta["channel_stats"]["mean"]).all()
  C.verify(str(out))


@pytest.mark.parametrize("style", ["json", "text"])
def test_bad_indices_dropped(tmp_path, style):
  src = tmp_path / "a.h5"
  d = F.write_e2e_split_h5(src, (10, 3, 3), channels=3)
  spec = tmp_path / ("bad.json" if style == "json" else "bad.txt")
  if style == "json":
    spec.write_text(json.dumps({"train": [1, 4], "test": [[0, 0]]}))
  else:
    spec.write_text("# known bad\ntrain:1\ntrain:4\ntest:0:0\n")
  out = tmp_path / "out"
  meta = C.convert([str(src)], str(out), bad_indices=str(spec))
  assert meta["splits"]["train"]["dropped_indices"] == [[0, 1], [0, 4]]
  assert meta["splits"]["train"]["num_dropped_bad_indices"] == 2
  assert meta["splits"]["test"]["num_examples"] == 2
  assert_same(read_split(out, "train"), d["train"], [0, 2, 3, 5, 6, 7, 8, 9])
  C.verify(str(out))


def test_bad_indices_cover_nan_rows_under_reject(tmp_path):
  src = tmp_path / "nan.h5"
  _e2e_with_nans(src)
  meta = C.convert([str(src)], str(tmp_path / "out"), bad_indices={"train": [2, 7], "test": [1]})
  assert meta["splits"]["train"]["num_examples"] == 8


def test_nan_reject_names_target_keys(tmp_path):
  src = tmp_path / "nan.h5"
  _e2e_with_nans(src)
  with pytest.raises(NonFiniteError, match=r"nan.h5 key 'test_meta\[:,1\]', 'test_meta\[:,2\]' "
                                           r"\(split 'test'\): 1 targets with NaN/Inf at indices \[1\]"):
    C.convert([str(src)], str(tmp_path / "out"), bad_indices={"train": [2, 7]})


# Bad inputs through convert.


def _bad_inputs(tmp_path):
  cases = {}
  p = tmp_path / "missing.h5"
  cases["missing"] = (p, "missing.h5", None)
  p = tmp_path / "trunc.h5"
  F.write_qg_opendata_h5(p, 4)
  data = p.read_bytes()
  p.write_bytes(data[: len(data) // 2])
  cases["truncated"] = (p, "trunc.h5", None)
  p = tmp_path / "nolayout.h5"
  with h5py.File(p, "w") as f:
    f["foo"] = np.zeros((2, 3), np.float32)
  cases["nolayout"] = (p, "nolayout.h5", "foo")
  p = tmp_path / "rank.h5"
  with h5py.File(p, "w") as f:
    f["X_jets"] = np.zeros((2, 125, 125), np.float32)
    f["y"] = np.zeros(2)
  cases["rank"] = (p, "rank.h5", "X_jets")
  p = tmp_path / "dtype.h5"
  with h5py.File(p, "w") as f:
    f.create_dataset("jet", data=np.array([[b"a"]] * 2).reshape(2, 1, 1, 1))
  cases["dtype"] = (p, "dtype.h5", "jet")
  p = tmp_path / "length.h5"
  with h5py.File(p, "w") as f:
    f["X"] = np.zeros((3, 32, 32, 2), np.float32)
    f["y"] = np.zeros(2)
  cases["length"] = (p, "length.h5", "y")
  p = tmp_path / "labels.h5"
  with h5py.File(p, "w") as f:
    f["jet"] = np.zeros((3, 125, 125, 8), np.float32)
    f["Y"] = np.array([[0], [3], [1]], np.float32)
  cases["labels"] = (p, "labels.h5", "Y")
  p = tmp_path / "ragged.parquet"
  F.write_ragged_parquet(p)
  cases["ragged"] = (p, "ragged.parquet", "X_jets")
  return cases


CASES = ["missing", "truncated", "nolayout", "rank", "dtype", "length", "labels", "ragged"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_errors(tmp_path, case):
  path, fname, key = _bad_inputs(tmp_path)[case]
  out = tmp_path / "out"
  with pytest.raises(DataFormatError) as ei:
    C.convert([str(path)], str(out))
  msg = str(ei.value)
  assert fname in msg
  if key:
    assert f"'{key}'" in msg or key in msg
  if case == "labels":
    assert "[3.0]" in msg and "index 1" in msg
  assert not out.exists() and no_leftovers(tmp_path)


def test_statistics_do_not_depend_on_the_chunk_size(tmp_path):
  """Sums fold 16-row groups of source rows in order (records.py), so reading 5, 16 or 256
  rows at a time gives the same float64 bits: what lets Beam workers split the rows."""
  src = tmp_path / "a.h5"
  F.write_e2e_split_h5(src, (45, 6, 6), channels=3)
  metas = [C.convert([str(src)], str(tmp_path / f"out{cs}"), chunk_size=cs, nan_policy="drop",
                     bad_indices={"train": [4, 17]}) for cs in (5, 16, 256)]
  for m in metas[1:]:
    assert m["splits"] == metas[0]["splits"] and m["channel_stats"] == metas[0]["channel_stats"]


# Atomicity / overwrite.


def test_interrupted_conversion_leaves_no_dir(tmp_path, monkeypatch):
  src = tmp_path / "a.h5"
  F.write_e2e_split_h5(src, (8, 4, 4), channels=3)
  orig = B._generate_split

  def boom(plan, split):
    for i, item in enumerate(orig(plan, split)):
      if split == "validation" and i == 2:
        raise KeyboardInterrupt("simulated crash")
      yield item

  monkeypatch.setattr(B, "_generate_split", boom)
  out = tmp_path / "out"
  with pytest.raises(KeyboardInterrupt):
    C.convert([str(src)], str(out))
  assert not out.exists()
  assert no_leftovers(tmp_path)


def test_killed_conversion_leaves_no_dataset_and_rerun_starts_clean(tmp_path, caplog):
  src = tmp_path / "a.h5"
  F.write_e2e_split_h5(src, (8, 4, 4), channels=3)
  out, writing = tmp_path / "out", tmp_path / "writing"
  # the converter CLI, held in the middle of writing records, where SIGKILL finds it
  code = ("import sys, time\n"
          "from mae_jax.data import builder as B, convert as C\n"
          "gen = B._generate_split\n"
          "def held(plan, split):\n"
          "  for i, item in enumerate(gen(plan, split)):\n"
          "    yield item\n"
          f"    if i == 2: open({str(writing)!r}, 'w').close(); time.sleep(600)\n"
          "B._generate_split = held\n"
          f"sys.exit(C.main(['--input', {str(src)!r}, '--output', {str(out)!r}]))\n")
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  deadline = time.time() + 120
  while not writing.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert writing.exists(), "the converter never started writing"
  partial, = glob.glob(str(out) + ".partial-*")
  assert not out.exists()
  # a live conversion's partial directory (this process) is left alone
  live = tmp_path / "out.partial-live"
  live.mkdir()
  (live / C._CREATOR).write_text(json.dumps(workdir_lock.identity()))
  caplog.set_level("WARNING")
  C.convert([str(src)], str(out))  # the same command again
  assert f"removed {partial}, left by an interrupted conversion (host " in caplog.text
  assert f"process {proc.pid} is no longer running" in caplog.text
  assert f"leaving {live}: a conversion may still be writing it" in caplog.text
  C.verify(str(out))
  assert sorted(os.listdir(tmp_path)) == ["a.h5", "out", "out.partial-live", "writing"]


def test_full_disk_in_converter_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
  import tensorflow as tf
  src = tmp_path / "a.h5"
  F.write_egamma_h5(src, 4)

  def full(cls, path, iterator):  # what TF raises writing a shard on a full disk
    raise tf.errors.ResourceExhaustedError(None, None, f"{path}; {os.strerror(errno.ENOSPC)}")

  monkeypatch.setattr(tfds.core.file_adapters.TfRecordFileAdapter, "write_examples",
                      classmethod(full))
  out = tmp_path / "out"
  with pytest.raises(errors.DiskFullError) as e:
    C.convert([str(src)], str(out))
  assert str(e.value) == (f"no space left on {errors.describe_device(str(out))} for {out}; the "
                          "partial conversion is removed and nothing was written to the output")
  assert C.main(["--input", str(src), "--output", str(out)]) == 2  # one line, exit status 2
  assert not out.exists() and no_leftovers(tmp_path)


def test_refuses_existing_output_unless_overwrite(tmp_path):
  src = tmp_path / "a.h5"
  F.write_egamma_h5(src, 4)
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  with pytest.raises(FileExistsError):
    C.convert([str(src)], str(out))
  assert (out / "keep.txt").exists()
  C.convert([str(src)], str(out), overwrite=True)
  assert not (out / "keep.txt").exists()
  C.verify(str(out))
  assert no_leftovers(tmp_path)


def test_no_stray_temp_dirs_and_no_global_state(tmp_path, monkeypatch):
  """TFDS would mkdtemp() a directory in the system temp dir per conversion and never
  remove it; the converter leaves nothing there and does not swap `tempfile.tempdir`."""
  systmp = tmp_path / "systmp"
  systmp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(systmp))
  seen = []
  orig_init = C.MaeJaxConverted.__init__

  def spy(self, **kwargs):
    seen.append(tempfile.tempdir)
    orig_init(self, **kwargs)
    seen.append(tempfile.tempdir)

  monkeypatch.setattr(C.MaeJaxConverted, "__init__", spy)
  src = tmp_path / "a.h5"
  F.write_egamma_h5(src, 4)
  C.convert([str(src)], str(tmp_path / "out"))
  assert seen == [str(systmp)] * 2
  assert tempfile.tempdir == str(systmp)
  assert os.listdir(systmp) == []
  assert no_leftovers(tmp_path)


def test_import_has_no_side_effects():
  """Importing the converter does not configure TensorFlow; convert() and verify() hide
  the accelerators from TF themselves (pipeline.hide_accelerators_from_tf)."""
  code = (
      "import tensorflow as tf\n"
      "calls = []\n"
      "tf.config.set_visible_devices = lambda *a, **k: calls.append(a)\n"
      "from mae_jax.data import convert\n"
      "assert calls == [], calls\n"
      "try:\n"
      "  convert.verify('/nonexistent')\n"
      "except FileNotFoundError:\n"
      "  pass\n"
      "assert calls == [([], 'GPU')], calls\n")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                     env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert r.returncode == 0, r.stderr


# Verify failures.


@pytest.fixture
def good_out(tmp_path):
  src = tmp_path / "a.h5"
  F.write_e2e_split_h5(src, (6, 3, 3), channels=3)
  out = tmp_path / "out"
  C.convert([str(src)], str(out))
  return out


def test_verify_detects_corrupted_shard(good_out):
  shard = glob.glob(str(good_out / "*-validation.tfrecord-*"))[0]
  data = bytearray(open(shard, "rb").read())
  mid = len(data) // 2
  data[mid:mid + 64] = bytes(64)
  open(shard, "wb").write(bytes(data))
  with pytest.raises(VerificationError, match="split 'validation'"):
    C.verify(str(good_out))


def test_verify_detects_deleted_shard(good_out):
  os.remove(glob.glob(str(good_out / "*-test.tfrecord-*"))[0])
  with pytest.raises(VerificationError, match="split 'test'"):
    C.verify(str(good_out))


def test_verify_detects_meta_count_edit(good_out):
  mp = good_out / meta_lib.META_FILE
  meta = json.loads(mp.read_text())
  meta["splits"]["train"]["num_examples"] = 5
  meta["splits"]["train"]["num_dropped"] = 1
  meta["splits"]["train"]["dropped_indices"] = [[0, 99]]
  mp.write_text(json.dumps(meta))
  with pytest.raises(VerificationError, match="split 'train'.*examples"):
    C.verify(str(good_out))


def test_verify_detects_checksum_edit(good_out):
  mp = good_out / meta_lib.META_FILE
  meta = json.loads(mp.read_text())
  meta["splits"]["test"]["sha256"] = "0" * 64
  mp.write_text(json.dumps(meta))
  with pytest.raises(VerificationError, match="split 'test'.*sha256"):
    C.verify(str(good_out))


# CLI.


def test_cli_convert_and_verify(tmp_path, capsys):
  src = tmp_path / "eg.h5"
  F.write_egamma_h5(src, 10)
  out = tmp_path / "cli_out"
  rc = C.main(["--input", str(src), "--output", str(out), "--holdout", "0.2,0.2",
               "--chunk-size", "3"])
  assert rc == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["splits"]["train"]["num_examples"] == 6
  assert C.main(["verify", str(out)]) == 0
  assert "OK" in capsys.readouterr().out
  assert C.main(["--input", str(src), "--output", str(out)]) == 2  # exists
  meta = meta_lib.load_meta(out)
  meta["splits"]["test"]["sha256"] = "x"
  (out / meta_lib.META_FILE).write_text(json.dumps(meta))
  assert C.main(["verify", str(out)]) == 1
  assert "split 'test'" in capsys.readouterr().err


def test_cli_is_quiet_by_default(tmp_path):
  """The JSON summary and the converter's own warnings only: TensorFlow's start-up lines,
  TFDS's INFO lines and progress bars only with -v."""
  src = tmp_path / "eg.h5"
  F.write_egamma_h5(src, 10)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env["PYTHONPATH"] = root
  # --holdout 0: 10 jets with random labels can draw a one-class hold-out (an error now)
  r = subprocess.run([sys.executable, "-m", "mae_jax.data.convert", "--input", str(src),
                      "--output", str(tmp_path / "out"), "--holdout", "0"], capture_output=True,
                     text=True, env=env, cwd=tmp_path, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads(r.stdout)["splits"]["train"]["num_examples"] == 10
  noise = [ln for ln in r.stderr.splitlines()
           if not ln.startswith(("WARNING __main__: ", "WARNING mae_jax."))]  # its own warnings
  assert noise == []


def test_cli_holds_out_validation_and_test_by_default_for_files_without_splits(tmp_path):
  src = tmp_path / "qg.h5"
  F.write_qg_opendata_h5(src, 20)
  assert C.main(["--input", str(src), "--output", str(tmp_path / "auto")]) == 0
  meta = json.loads((tmp_path / "auto" / "mae_jax_meta.json").read_text())
  assert {s: m["num_examples"] for s, m in meta["splits"].items()} == {
      "train": 16, "validation": 2, "test": 2}
  assert meta["holdout"] == [0.1, 0.1]
  assert C.main(["--input", str(src), "--output", str(tmp_path / "all"), "--holdout", "0"]) == 0
  meta = json.loads((tmp_path / "all" / "mae_jax_meta.json").read_text())
  assert list(meta["splits"]) == ["train"] and meta["holdout"] is None
