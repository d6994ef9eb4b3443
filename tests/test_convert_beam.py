"""The Apache Beam conversion (DirectRunner) writes the dataset the one-process path writes."""

from __future__ import annotations

import json
import os
import sys

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import data_fixtures as F  # noqa: E402

pytest.importorskip("apache_beam")
tfds = pytest.importorskip("tensorflow_datasets")

from mae_jax.data import beam_convert  # noqa: E402
from mae_jax.data import convert as C  # noqa: E402
from mae_jax.data import meta as meta_lib  # noqa: E402
from mae_jax.errors import DataFormatError, NonFiniteError  # noqa: E402

TWO_WORKERS = "direct_num_workers=2,direct_running_mode=multi_processing"


def comparable(meta):
  """What both engines must agree on: everything but the time stamp and the engine's name."""
  return {k: v for k, v in meta.items() if k not in ("created", "engine")}


def write_jets(path, n, seed=0, occupancy=0.004, size=32):
  """`n` sparse size x size x 8 jets per `e2e_split` (80/10/10), about as occupied as the
  generator's, gzip-chunked per jet like `mae_jax.simulation` writes them; written in blocks
  (small memory). 32x32 (not 125x125) keeps the 2,000-jet test short: the engines' code
  does not depend on the image size."""
  rng = np.random.default_rng(seed)
  sizes = {"train": n - 2 * (n // 10), "validation": n // 10, "test": n // 10}
  with h5py.File(path, "w") as f:
    for split, m in sizes.items():
      ds = f.create_dataset(f"{split}_jet", (m, size, size, 8), np.float32, chunks=(1, size, size, 8),
                            compression="gzip", compression_opts=1)
      for a in range(0, m, 200):
        b = min(m, a + 200)
        x = np.zeros((b - a, size, size, 8), np.float32)
        hit = rng.random(x.shape, np.float32) < occupancy
        x[hit] = rng.exponential(3.0, int(hit.sum())).astype(np.float32)
        x[..., 1:3] *= np.where(rng.random((b - a, size, size, 2)) < 0.5, -1, 1).astype(np.float32)
        ds[a:b] = x
      meta = np.stack([rng.integers(0, 2, m), rng.normal(170, 30, m), rng.normal(500, 50, m)], 1)
      f.create_dataset(f"{split}_meta", data=meta.astype(np.float32))
  return sizes


def test_two_workers_match_the_plain_path_on_2000_jets(tmp_path):
  src = tmp_path / "jets.h5"
  sizes = write_jets(src, 2000)
  plain = C.convert([str(src)], str(tmp_path / "plain"))
  beam = C.convert([str(src)], str(tmp_path / "beam"), engine="beam", beam_options=TWO_WORKERS)
  assert beam["engine"] == "beam" and plain["engine"] == "plain"
  assert comparable(beam) == comparable(plain)  # counts, channel statistics, sha256: to the bit
  assert {s: m["num_examples"] for s, m in beam["splits"].items()} == sizes
  assert set(C.verify(str(tmp_path / "beam"))) == set(sizes)
  assert sorted(os.listdir(tmp_path)) == ["beam", "jets.h5", "plain"]  # nothing left behind


def test_drops_sources_parquet_and_holdout_match_the_plain_path(tmp_path):
  # Odd chunk sizes, two inputs, row groups of 7 rows (statistics groups straddle chunks),
  # NaN rows dropped, listed bad rows, a hold-out split: every record and number the same.
  a, b = tmp_path / "a.h5", tmp_path / "b.h5"
  F.write_e2e_split_h5(a, (21, 5, 6), channels=3)
  F.write_e2e_split_h5(b, (19, 3, 4), channels=3, seed=1)
  with h5py.File(a, "a") as f:
    f["train_jet"][3, 1, 1, 0] = np.nan
    f["train_meta"][17, 2] = np.inf
  bad = {"train": [[1, 2], 20], "*": [[0, 1]]}
  pq = tmp_path / "qg.parquet"
  F.write_qg_parquet(pq, 37, row_group_size=7)
  for inputs, kw in (([a, b], dict(nan_policy="drop", bad_indices=bad, chunk_size=5)),
                     ([pq], dict(holdout="0.2,0.1", chunk_size=3))):
    name = inputs[0].stem
    plain = C.convert([str(p) for p in inputs], str(tmp_path / f"{name}_plain"), **kw)
    beam = C.convert([str(p) for p in inputs], str(tmp_path / f"{name}_beam"), engine="beam", **kw)
    assert comparable(beam) == comparable(plain)
    C.verify(str(tmp_path / f"{name}_beam"))
  # The hold-out ran (stratified: round(0.2 n_c) per class; plain and Beam drew the same rows).
  assert plain["splits"]["validation"]["num_examples"] == 8 and plain["split_seed"] == 0
  drops = meta_lib.load_meta(tmp_path / "a_beam")["splits"]["train"]
  assert drops["num_dropped_nonfinite"] == 2 and drops["num_dropped_bad_indices"] == 3
  assert drops["dropped_indices"] == [[0, 1], [0, 3], [0, 17], [0, 20], [1, 2]]


def test_nan_reject_and_empty_split_errors_leave_nothing(tmp_path):
  src = tmp_path / "nan.h5"
  F.write_e2e_split_h5(src, (12, 4, 4), channels=3)
  with h5py.File(src, "a") as f:
    f["validation_jet"][2, 0, 0, 1] = np.inf
  messages = []
  for engine in ("plain", "beam"):
    with pytest.raises(NonFiniteError) as e:
      C.convert([str(src)], str(tmp_path / engine), engine=engine)
    messages.append(str(e.value))
  assert messages[0] == messages[1]
  assert "key 'validation_jet' (split 'validation'): 1 images with NaN/Inf at indices [2]" in messages[0]
  with pytest.raises(DataFormatError, match="split 'test': no examples left after dropping"):
    C.convert([str(src)], str(tmp_path / "empty"), engine="beam", nan_policy="drop",
              bad_indices={"test": [0, 1, 2, 3]})
  assert sorted(os.listdir(tmp_path)) == ["nan.h5"]


def test_cli_beam_pipeline_options_select_beam(tmp_path, capsys):
  src = tmp_path / "eg.h5"
  F.write_egamma_h5(src, 10)
  out = tmp_path / "out"
  assert C.main(["--input", str(src), "--output", str(out),
                 "--beam_pipeline_options", "direct_num_workers=1", "--holdout", "0",
                 "--verify"]) == 0
  assert json.loads(capsys.readouterr().out.split("\nverified")[0])["splits"]["train"][
      "num_examples"] == 10
  assert meta_lib.load_meta(out)["engine"] == "beam"


def test_pipeline_options_parsing():
  opts = beam_convert.pipeline_options(TWO_WORKERS).get_all_options()
  assert opts["direct_num_workers"] == 2 and opts["direct_running_mode"] == "multi_processing"
  with pytest.raises(ValueError, match="expected k=v"):
    beam_convert.pipeline_options("direct_num_workers")
  with pytest.raises(ValueError, match="engine='spark'"):
    C.convert(["x.h5"], "out", engine="spark")


def test_work_items_are_whole_statistics_groups(tmp_path):
  src = tmp_path / "a.h5"
  F.write_e2e_split_h5(src, (40, 3, 3), channels=3)
  plan = C._plan_for([str(src)], "auto", "reject", None, None, 20)
  items = beam_convert.work_items(plan, "train")
  assert items == [(0, 0, 32), (0, 32, 40)]  # 20 rounded up to 2 groups of 16
