"""Downstream stages through the one trainer: pretrain -> probe / finetune / scratch / ResNet / regression."""

import json
import os

import jax
import numpy as np
import pytest

from mae_jax import checkpoint, trainer
from helpers import converted_dataset, load_config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return converted_dataset(tmp_path_factory.mktemp("stages"), n=(64, 32, 32))


@pytest.fixture(scope="module")
def pretrained(dataset, tmp_path_factory):
  w = str(tmp_path_factory.mktemp("pre") / "w")
  c = load_config("pretrain", batch_size=16, total_steps=6, warmup_steps=1, lr=1e-3, figures=False)
  c.data.dir = dataset
  trainer.train_and_evaluate(c, w)
  return w


def stage_config(name, dataset, arg="variant=tiny", **kw):
  c = load_config(name, arg, batch_size=16, log_every=1, ckpt_every=1000, **kw)
  c.data.dir = dataset
  c.task.bootstrap = 20
  return c


def latest_params(workdir):
  return checkpoint.read_arrays(workdir)[0]


def test_probe_leaves_encoder_bit_identical(dataset, pretrained, tmp_path):
  c = stage_config("probe", dataset, total_steps=5, warmup_steps=1, eval_every=2)
  c.model_init = pretrained
  w = str(tmp_path / "probe")
  out = trainer.train_and_evaluate(c, w)
  pre = latest_params(pretrained)["params"]["encoder"]
  state = latest_params(w)
  probe_enc = state["params"]["backbone"]["encoder"]
  for a, b in zip(jax.tree.leaves(pre), jax.tree.leaves(probe_enc)):
    np.testing.assert_array_equal(a, b)
  assert "bn" in state["model_state"]["batch_stats"]["head"]  # BatchNorm statistics are kept
  init_head = np.zeros_like(state["params"]["head"]["dense"]["bias"])
  assert not np.array_equal(state["params"]["head"]["dense"]["bias"], init_head)  # head trained
  for key in ("validation/auc", "test/auc", "test/accuracy", "test/rejection_50"):
    assert key in out and not np.isnan(out[key]), key  # rejection may be inf (no background passes)
  assert out["test/examples"] == 32 and out["selected_by"] == "validation split"
  saved = json.load(open(os.path.join(w, "final_metrics.json")))
  assert saved["test/auc"] == out["test/auc"]


def test_finetune_changes_encoder_with_layer_decay(dataset, pretrained, tmp_path):
  c = stage_config("finetune", dataset, total_steps=3, warmup_steps=1)
  c.model_init = pretrained
  trainer.train_and_evaluate(c, str(tmp_path / "ft"))
  pre = latest_params(pretrained)["params"]["encoder"]
  ft = latest_params(str(tmp_path / "ft"))["params"]["backbone"]["encoder"]
  assert not np.array_equal(pre["block_00"]["mlp"]["fc1"]["kernel"], ft["block_00"]["mlp"]["fc1"]["kernel"])


def test_scratch_classifier_learns_toy_label(dataset, tmp_path):
  c = stage_config("scratch", dataset, total_steps=60, warmup_steps=5, lr=3e-2, eval_every=0)
  out = trainer.train_and_evaluate(c, str(tmp_path / "scratch"))
  rows = checkpoint.read_history(str(tmp_path / "scratch"))
  first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
  assert last < 0.8 * first, (first, last)
  assert out["test/auc"] > 0.8, out
  scores = np.load(tmp_path / "scratch" / "test_scores.npz")  # the classify task's artefact
  assert len(scores["label"]) == len(scores["score"]) == out["test/examples"]


def test_resnet_baseline_runs(dataset, tmp_path):
  c = stage_config("resnet", dataset, "arch=resnet15", total_steps=30, warmup_steps=3, lr=3e-3)
  out = trainer.train_and_evaluate(c, str(tmp_path / "resnet"))
  assert out["test/auc"] > 0.7, out


def test_regression_reports_physical_units(dataset, pretrained, tmp_path):
  c = stage_config("finetune", dataset, total_steps=20, warmup_steps=2, lr=3e-2)
  c.model_init = pretrained
  c.task.name = "regress"
  c.task.targets = "jet_mass"
  out = trainer.train_and_evaluate(c, str(tmp_path / "reg"))
  for key in ("test/jet_mass_mae", "test/jet_mass_resolution", "test/jet_mass_r2"):
    assert np.isfinite(out[key]), key
  assert out["test/jet_mass_mae"] < 200  # GeV: de-standardised, not in units of std


def test_model_init_shape_mismatch_is_clear(dataset, pretrained, tmp_path):
  c = stage_config("probe", dataset, "variant=small-e2e", total_steps=1)
  c.model_init = pretrained
  with pytest.raises(ValueError, match="has shape .* needs .*different variant"):
    trainer.train_and_evaluate(c, str(tmp_path / "bad"))


def test_head_init_follows_the_mae_recipe_per_stage():
  # probe 0.01 (its features are batch-normalised), finetune and scratch 2e-5: a near-zero
  # head so that its random initial direction does not decide the ranking of a short run
  import jax
  from mae_jax.models import registry
  for name, std in (("probe", 0.01), ("finetune", 2e-5), ("scratch", 2e-5)):
    config = load_config(name)
    model = registry.build_model(config, (25, 25, 3))
    params = jax.jit(lambda: model.init({"params": jax.random.key(0), "dropout":
                                         jax.random.key(1)}, np.zeros((1, 25, 25, 3))))()
    kernel = np.asarray(params["params"]["head"]["dense"]["kernel"])
    # truncated normal at 2 std: its std is 0.88 x the parameter; 64 entries -> 25% slack
    assert 0.6 * std < kernel.std() < 1.1 * std, (name, kernel.std())
