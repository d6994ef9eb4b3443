"""The protocol command: every stage chained from checkpoints, report.md with its table and figures."""

import json
import os

import numpy as np
import pytest

from mae_jax import protocol
from mae_jax.data import convert
from helpers import load_config, write_small_e2e


def test_overrides_are_typed_and_unknown_fields_rejected():
  c = load_config()
  protocol.apply_overrides(c, ["--config.batch_size=16", "--config.model.mask_ratio=0.5",
                               "--config.data.normalization=none"])
  assert c.batch_size == 16 and c.model.mask_ratio == 0.5 and c.data.normalization == "none"
  with pytest.raises(ValueError, match="unknown config field 'model.nope'"):
    protocol.apply_overrides(c, ["--config.model.nope=1"])


def test_fmt_mean_and_sample_std():
  assert protocol.fmt([0.9]) == "0.9000"
  assert protocol.fmt([0.8, 0.9, 1.0]) == f"0.9000 ± {np.std([0.8, 0.9, 1.0], ddof=1):.4f}"
  assert protocol.fmt([None, float("nan")]) == "n/a"


def test_protocol_runs_all_stages_and_writes_report(tmp_path):
  write_small_e2e(tmp_path / "small.h5", n=(48, 16, 16))
  convert.convert([str(tmp_path / "small.h5")], str(tmp_path / "tfds"))
  root = tmp_path / "proto"
  protocol.main(["--data", str(tmp_path / "tfds"), "--root", str(root), "--seeds", "0",
                 "--steps", "pretrain=3,probe=2,finetune=2,scratch=2,resnet=2",
                 "--config.batch_size=16", "--config.log_every=1", "--config.task.bootstrap=10"])
  report = open(root / "report.md").read()
  assert "| model | params | mask ratio | LP acc | LP AUC | FT acc | FT AUC | scratch AUC" in report
  assert "test split" in report and "predict-zeros" in report and "Compression" in report
  for fig in ("loss_curves.png", "roc_curves.png", "reconstruction.png"):
    assert os.path.exists(root / fig) and f"]({fig})" in report
  results = json.load(open(root / "results.json"))
  seed0 = results["per_seed"][0]
  for stage in ("probe", "finetune", "scratch", "resnet"):
    assert 0.0 <= seed0[stage]["test/auc"] <= 1.0
  assert set(results["timings"]) >= {"pretrain", "reconstruction", "probe", "finetune"}
  # rerunning reuses finished stages instead of training again
  protocol.main(["--data", str(tmp_path / "tfds"), "--root", str(root), "--seeds", "0",
                 "--steps", "pretrain=3,probe=2,finetune=2,scratch=2,resnet=2",
                 "--config.batch_size=16", "--config.task.bootstrap=10"])
  assert json.load(open(root / "results.json"))["timings"]["probe"] == 0.0
