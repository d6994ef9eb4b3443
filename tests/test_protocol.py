"""The protocol command: every stage chained from checkpoints, report.md with its table and figures."""

import json
import os

import numpy as np
import pytest

from mae_jax import protocol
from mae_jax.errors import UsageError
from mae_jax.data import convert
from helpers import load_config, write_small_e2e


def test_fmt_mean_and_sample_std():
  assert protocol.fmt([0.9]) == "0.9000"
  assert protocol.fmt([0.8, 0.9, 1.0]) == f"0.9000 ± {np.std([0.8, 0.9, 1.0], ddof=1):.4f}"
  assert protocol.fmt([None, float("nan")]) == "n/a"


def test_protocol_runs_all_stages_and_writes_report(tmp_path, capsys):
  """One run of every default stage with a separate pretraining set and two labelled-set
  sizes, then a rerun that reuses everything."""
  write_small_e2e(tmp_path / "small.h5", n=(48, 16, 16))
  convert.convert([str(tmp_path / "small.h5")], str(tmp_path / "tfds"))
  write_small_e2e(tmp_path / "pool.h5", n=(40, 8, 8), seed=5)
  convert.convert([str(tmp_path / "pool.h5")], str(tmp_path / "pool"))
  root = tmp_path / "proto"
  argv = ["--data", str(tmp_path / "tfds"), "--pretrain-data", str(tmp_path / "pool"),
          "--root", str(root), "--seeds", "0", "--labelled", "8,16",
          "--steps", "pretrain=3,probe=2,finetune=2,resnet=2", "--recon-splits", "test",
          "--config.batch_size=8", "--config.log_every=1", "--config.task.bootstrap=10",
          # the reference's decoder init: 3 steps leave skill < 0, the caveat's case (the
          # recipe's zero-init starts at predict-zeros, skill >= 0)
          "--pretrain.model.pred_init=xavier",
          "--trees-grid", "learning_rate=0.1;max_iter=10,20;max_leaf_nodes=7;min_samples_leaf=2"]
  protocol.main(argv)
  report = open(root / "report.md").read()
  for section in ("## What this run shows", "## Caveats", "## Classification (test split)",
                  "## AUC against the number of labelled jets", "## Reconstruction",
                  "## Compression", "## Runtime"):
    assert section in report, section
  for row in ("probe", "probe_random", "finetune", "scratch", "resnet", "observables",
              "observables_gbt", "observables_encoder"):
    assert f"\n| {row} | " in report, row
  # the verdict weighs the pretrained stages against the strongest control that ran
  verdict = [ln for ln in report.splitlines() if "Against the strongest control that ran (" in ln]
  assert len(verdict) == 2 and all("σ" in ln and ": **" in ln for ln in verdict), verdict
  compression = report[report.index("## Compression"):report.index("## Runtime")]
  assert "Signal: **" in report and "| same |" not in compression and "n/a" not in compression
  assert "a separate dataset, labels ignored" in report and "16 labelled" in report
  assert "Reconstruction skill < 0" in report  # 3 pretraining steps: the caveat is there
  assert "| track_d0 |" not in report  # toy channels (tracks, ecal, hcal): no signed ones
  for fig in ("loss_curves.png", "roc_curves.png", "reconstruction.png", "label_efficiency.png"):
    assert os.path.exists(root / fig) and f"]({fig})" in report
  # pretraining read the pool, the downstream stages the labelled set's subsets
  pre = json.load(open(root / "seed0" / "pretrain" / "config.json"))
  assert pre["data"]["dir"] == str(tmp_path / "pool")
  for n in (8, 16):
    cfg = json.load(open(root / "seed0" / f"n{n}" / "finetune" / "config.json"))
    assert cfg["data"]["train_examples"] == n and cfg["data"]["dir"] == str(tmp_path / "tfds")
    scratch = json.load(open(root / "seed0" / f"n{n}" / "scratch" / "config.json"))
    # the finetune model and budget, randomly initialised
    assert scratch["model_init"] == "" and scratch["total_steps"] == cfg["total_steps"] == 2
    obs = json.load(open(root / "seed0" / f"n{n}" / "observables" / "final_metrics.json"))
    assert obs["train_examples"] == n
  results = json.load(open(root / "results.json"))
  seed0 = results["per_seed"][0]
  for n in ("8", "16"):
    for stage in ("probe", "probe_random", "finetune", "scratch", "resnet", "observables",
                  "observables_gbt", "observables_encoder"):
      assert 0.0 <= seed0["by_labelled"][n][stage]["test/auc"] <= 1.0, (n, stage)
  assert set(results["timings"]) >= {"pretrain", "reconstruction", "probe", "finetune"}
  # rerunning reuses finished stages, and the runtime table keeps what they took
  # (asking for one more reconstruction split measures that split only, into the same file)
  capsys.readouterr()
  recon = json.load(open(root / "seed0" / "pretrain" / "reconstruction.json"))
  assert set(recon) >= {"test"} and "validation" not in recon
  protocol.main([a if a != "test" else "test,validation" for a in argv])
  out = capsys.readouterr().out
  assert "reconstruction on " + str(tmp_path / "tfds") + " validation\n" in out
  again_recon = json.load(open(root / "seed0" / "pretrain" / "reconstruction.json"))
  assert again_recon["test"] == recon["test"] and "validation" in again_recon
  assert "seed 0 n=16: finetune: reusing the finished run" in out
  assert "seed 0 n=16: observables_encoder: reusing the finished run" in out
  again = json.load(open(root / "results.json"))
  assert again["timings"]["probe"] == results["timings"]["probe"] > 0


@pytest.mark.slow
def test_select_keeps_the_best_validation_value_and_probe_random_stays_random(tmp_path):
  from mae_jax import checkpoint
  from helpers import converted_dataset
  data = converted_dataset(tmp_path)
  root = tmp_path / "proto"
  protocol.main(["--data", data, "--root", str(root), "--seeds", "0",
                 "--stages", "pretrain,probe_random,finetune",
                 "--steps", "pretrain=3,probe=2,finetune=2",
                 "--select", "finetune.lr=1e-3,3e-2,1e30",
                 # inherited by probe_random, except model_init (what makes it a control)
                 "--probe.lr=0.05", "--probe.model_init=/no/such/run",
                 "--config.batch_size=16", "--config.task.bootstrap=5"])
  seed0 = json.load(open(root / "results.json"))["per_seed"][0]["by_labelled"]["all"]
  # one workdir per value, each trained with its own lr; the choice is the best validation AUC
  val = {}
  for lr in ("1e-3", "3e-2"):
    wd = root / "seed0" / f"finetune_lr{lr}"
    assert json.load(open(wd / "config.json"))["lr"] == float(lr)
    val[lr] = json.load(open(wd / "best.json"))["validation/auc"]
  # lr 1e30 diverges: recorded as failed, scored -inf (null in strict JSON), not chosen,
  # and the run goes on
  failed = root / "seed0" / "finetune_lr1e30" / "failed.json"
  assert "non-finite" in json.load(open(failed))["error"]
  grid = seed0["finetune"]["grid"]
  assert grid.pop("1e30") is None
  assert grid == pytest.approx(val)
  chosen = seed0["finetune"]["selected"]["lr"]
  assert val[chosen] == max(val.values())
  test_auc = json.load(open(root / "seed0" / f"finetune_lr{chosen}" / "final_metrics.json"))
  assert seed0["finetune"]["test/auc"] == test_auc["test/auc"]
  # the control probe: steps of the probe, no model_init, and its frozen encoder is the
  # random initialisation (not the pretrained encoder)
  cfg = json.load(open(root / "seed0" / "probe_random" / "config.json"))
  assert cfg["model_init"] == "" and cfg["total_steps"] == 2 and cfg["lr"] == 0.05
  import jax
  from mae_jax import experiment, parallel
  config = protocol.load_stage_config("probe_random", "tiny", "mae", 5)
  config.data.dir = data
  model = experiment.build_model(config, (25, 25, 3))
  fresh = experiment.create_state(config, model, parallel.make_mesh(config.mesh), (25, 25, 3)).state
  rand = checkpoint.read_arrays(str(root / "seed0" / "probe_random"), item="params")[0]
  pre = checkpoint.read_arrays(str(root / "seed0" / "pretrain"), item="params")[0]
  enc = rand["params"]["backbone"]["encoder"]
  jax.tree.map(np.testing.assert_array_equal, enc,
               jax.device_get(fresh["params"]["backbone"]["encoder"]))
  a = np.asarray(enc["block_00"]["mlp"]["fc1"]["kernel"])
  b = np.asarray(pre["params"]["encoder"]["block_00"]["mlp"]["fc1"]["kernel"])
  assert a.shape == b.shape and not np.allclose(a, b)
  assert "| probe_random |" in open(root / "report.md").read()


@pytest.mark.parametrize("item, message", [
    ("pretrain.lr=1e-3,2e-3", "stage 'pretrain'"),
    ("finetune.lr", "expected STAGE.FIELD=V1,V2"),
    ("resnet.lr=1e-3", "stage 'resnet'"),  # not among the stages run
])
def test_select_rejects_bad_requests(item, message):
  with pytest.raises(UsageError, match=message):
    protocol.parse_selects([item], ["pretrain", "probe", "finetune"])


def test_select_fields_are_checked_before_anything_trains():
  config_for = lambda st: protocol.load_stage_config(st, "tiny", "mae", 5)  # noqa: E731
  protocol.check_selects({"finetune": ("optim.b2", ["0.99", "0.999"])}, config_for)
  with pytest.raises(UsageError, match="finetune.lrr=1e-3.*unknown config field 'lrr'"):
    protocol.check_selects(protocol.parse_selects(["finetune.lrr=1e-3"], ["finetune"]),
                           config_for)


def test_recon_splits_are_checked_against_the_dataset(tmp_path):
  from mae_jax.data import meta as meta_lib
  (tmp_path / meta_lib.META_FILE).write_text(
      json.dumps({"splits": {"train": {"num_examples": 8}, "test": {"num_examples": 4}}}))
  assert protocol.check_recon_splits(None, str(tmp_path)) == ["train", "test"]
  assert protocol.check_recon_splits("test", str(tmp_path)) == ["test"]
  # asked for by name: an error naming the split and the dataset's splits
  with pytest.raises(UsageError, match=r"\['validation'\] not in the dataset.*'test', 'train'"):
    protocol.check_recon_splits("test,validation", str(tmp_path))
  with pytest.raises(UsageError, match="at least one split"):
    protocol.check_recon_splits(",", str(tmp_path))
  # the default skips a split the dataset lacks (an unlabelled set without a test split),
  # a named one does not
  (tmp_path / meta_lib.META_FILE).write_text(json.dumps({"splits": {"train": {}}}))
  assert protocol.check_recon_splits(None, str(tmp_path)) == ["train"]
  with pytest.raises(UsageError, match=r"\['test'\] not in the dataset"):
    protocol.check_recon_splits("train,test", str(tmp_path))
  (tmp_path / meta_lib.META_FILE).write_text(json.dumps({"splits": {"validation": {}}}))
  with pytest.raises(UsageError, match="neither a train nor a test split"):
    protocol.check_recon_splits(None, str(tmp_path))


def test_bad_labelled_sizes_and_pretraining_data_fail_before_training(tmp_path):
  from helpers import converted_dataset
  data = converted_dataset(tmp_path)
  base = ["--data", data, "--root", str(tmp_path / "p")]
  with pytest.raises(UsageError, match=r"--labelled 100: a class-balanced set of 100 needs"):
    protocol.main(base + ["--labelled", "10,100"])
  with pytest.raises(UsageError, match="is not a converted mae_jax dataset"):
    protocol.main(base + ["--pretrain-data", str(tmp_path / "nothing")])
  assert not (tmp_path / "p").exists()


def test_defaults_are_the_quickstart_recipe(tmp_path):
  """No flags: the recipe that learns (sparse tokens, 1,500/300 steps, batch 64, the stages'
  lrs, as the quickstart measured them); every user flag replaces its part of it."""
  argv = ["--data", "d", "--root", "r"]
  args, overrides, per_stage = protocol.parse_args(argv)
  assert args.tokens == "sparse"
  assert args.steps_by_stage == {"pretrain": "1500", "probe": "300", "finetune": "300",
                                 "resnet": "300"}
  cfg = {}
  for stage in ("pretrain", "probe", "finetune", "scratch", "resnet", "compression"):
    cfg[stage] = protocol.stages.stage_config(stage, args, 0, None, overrides, per_stage,
                                              args.steps_by_stage)
  want = {"pretrain": (5e-3, 64), "probe": (0.1, 64), "finetune": (8e-3, 64),
          "scratch": (2e-3, 64), "resnet": (4e-3, 32), "compression": (5e-3, 64)}
  assert {s: (c.lr, c.batch_size) for s, c in cfg.items()} == want
  assert cfg["pretrain"].warmup_steps == 100 and cfg["pretrain"].total_steps == 1500
  assert cfg["pretrain"].model.pred_init == "zeros"  # the lever chosen on validation
  assert cfg["compression"].model.pred_init == "xavier"  # (its decoder zero-inits anyway)
  assert cfg["pretrain"].model.tokens == cfg["finetune"].model.tokens == "sparse"
  assert cfg["scratch"].total_steps == 300  # the control takes finetune's budget
  # the user's flags win, for every stage or for one
  args, overrides, per_stage = protocol.parse_args(
      argv + ["--tokens", "dense", "--config.batch_size=8", "--finetune.lr=1e-3"])
  ft = protocol.stages.stage_config("finetune", args, 0, None, overrides, per_stage, {})
  rn = protocol.stages.stage_config("resnet", args, 0, None, overrides, per_stage, {})
  assert (ft.lr, ft.batch_size, ft.model.tokens) == (1e-3, 8, "dense")
  assert rn.batch_size == 8  # --config.batch_size also replaces the recipe's resnet batch
  for flag in ("--config.lr=1e-3", "--compression.lr=1e-3"):
    args, overrides, per_stage = protocol.parse_args(argv + [flag])
    assert protocol.stages.stage_config("compression", args, 0, None, overrides, per_stage,
                                        {}).lr == 1e-3


def test_levers_are_per_stage_overrides(tmp_path):
  """Issue 26's levers reach the stages named: reflections (data.reflect), mask ratio,
  decoder depth, normalisation; a control takes the overrides of the stage it controls for;
  a bad value fails before anything trains, naming the stage, the field and the values."""
  argv = ["--data", "d", "--root", "r", "--pretrain.data.reflect=both",
          "--finetune.data.reflect=both", "--probe.data.reflect=phi",
          "--pretrain.model.mask_ratio=0.6", "--pretrain.model.dec_depth=2",
          "--config.data.normalization=log1p_zscore"]
  args, overrides, per_stage = protocol.parse_args(argv)
  cfg = {st: protocol.stages.stage_config(st, args, 0, None, overrides, per_stage, {})
         for st in ("pretrain", "probe", "probe_random", "finetune", "scratch", "resnet")}
  assert {st: c.data.reflect for st, c in cfg.items()} == {
      "pretrain": "both", "probe": "phi", "probe_random": "phi", "finetune": "both",
      "scratch": "both", "resnet": "none"}
  assert (cfg["pretrain"].model.mask_ratio, cfg["finetune"].model.mask_ratio) == (0.6, 0.75)
  assert (cfg["pretrain"].model.dec_depth, cfg["finetune"].model.dec_depth) == (2, 0)
  assert {c.data.normalization for c in cfg.values()} == {"log1p_zscore"}
  from helpers import converted_dataset
  base = ["--data", converted_dataset(tmp_path), "--root", str(tmp_path / "p")]
  with pytest.raises(UsageError, match=r"^finetune: data.reflect='eta_phi'; choose one of none, "
                                       r"eta, phi, both$"):
    protocol.main(base + ["--finetune.data.reflect=eta_phi"])
  with pytest.raises(UsageError, match=r"^--select finetune.data.reflect=none,eta_phi: "
                                       r"data.reflect='eta_phi'; choose one of"):
    protocol.main(base + ["--select", "finetune.data.reflect=none,eta_phi"])
  assert not (tmp_path / "p").exists()


def test_help_shows_overrides_and_defaults(capsys):
  with pytest.raises(SystemExit):
    protocol.parse_args(["--help"])
  out = " ".join(capsys.readouterr().out.split())
  assert "--config.FIELD=VALUE (every stage)" in out and "--STAGE.FIELD=VALUE (one stage" in out
  assert "(default: sparse)" in out and "--pretrain.lr=0.005" in out and "--probe.lr=0.1" in out
  # the recipe's lrs are tiny's: another size is told to choose its own
  assert "The lrs were chosen for --variant tiny" in out and "--select finetune.lr=" in out
