"""The protocol's report and verdict from synthetic results (no training): sections of the
stages that ran, the strongest control, differences in units of their uncertainty, ties,
missing stages, class checks, and a stopped stage stopping the protocol."""

import argparse
import json
import os

import numpy as np
import pytest

from mae_jax import protocol
from mae_jax.errors import UsageError
from mae_jax.protocol import controls, report, stages, verdict


def delong_difference_std(y, a, b):
  """Std of AUC(a) - AUC(b) on the same jets by DeLong's formula (DeLong et al. 1988):
  an independent reference for the paired bootstrap."""
  pos, neg = y == 1, y == 0

  def components(s):
    sp, sn = s[pos][:, None], s[neg][None, :]
    psi = (sp > sn) + 0.5 * (sp == sn)
    return psi.mean(1), psi.mean(0)
  va, ta = components(a)
  vb, tb = components(b)
  s10 = np.cov(np.stack([va, vb]))
  s01 = np.cov(np.stack([ta, tb]))
  cov = s10 / pos.sum() + s01 / neg.sum()
  return float(np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))


def synthetic(tmp_path, aucs_shift, n=400, seeds=(0,)):
  """per_seed results with test_scores.npz per stage: scores = label * shift + shared noise
  (jet-to-jet) + own noise, so the classifiers are correlated as real ones are."""
  per_seed = []
  for seed in seeds:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int64)
    shared = rng.normal(size=n)
    res = {"seed": seed, "by_labelled": {"all": {}}, "workdirs": {}}
    for stage, shift in aucs_shift.items():
      s = y * shift + shared + 0.5 * rng.normal(size=n)
      wd = tmp_path / f"seed{seed}" / stage
      os.makedirs(wd, exist_ok=True)
      np.savez(wd / "test_scores.npz", label=y, score=s)
      from mae_jax.evaluate import metrics
      auc = metrics.roc_auc(y, s)
      res["by_labelled"]["all"][stage] = {"test/auc": auc, "test/auc_std": 0.02,
                                          "test/accuracy": 0.5}
      res["workdirs"][f"{stage}@all"] = str(wd)
    per_seed.append(res)
  return per_seed


def test_paired_bootstrap_matches_delong():
  rng = np.random.default_rng(3)
  y = (np.arange(600) % 2).astype(np.int64)
  shared = rng.normal(size=600)
  a = y * 1.2 + shared + 0.5 * rng.normal(size=600)
  b = y * 1.0 + shared + 0.5 * rng.normal(size=600)
  from sklearn.metrics import roc_auc_score
  diff, std = verdict.paired_auc_difference(y, a, b, n_bootstrap=1000)
  assert abs(diff - (roc_auc_score(y, a) - roc_auc_score(y, b))) < 1e-12
  ref = delong_difference_std(y, a, b)
  # 1000 resamples: the bootstrap std itself scatters by ~1/sqrt(2000) ~ 2.5%; 15% allowed
  assert abs(std / ref - 1) < 0.15, (std, ref)
  # paired: far below the two AUCs' stds combined as if independent (shared noise cancels)
  single = verdict.paired_auc_difference(y, a, np.zeros(600) + rng.normal(size=600) * 1e-9,
                                         n_bootstrap=200)[1]
  assert std < single


def test_verdict_against_the_strongest_control_with_ties(tmp_path):
  # finetune far above everything; probe level with the strongest control (gbt);
  # scratch and observables weaker controls
  per_seed = synthetic(tmp_path, {"finetune": 3.0, "probe": 1.51, "observables_gbt": 1.5,
                                  "observables": 0.8, "scratch": 1.0, "probe_random": 0.2})
  assert verdict.strongest_control(per_seed, None) == "observables_gbt"
  lines = verdict.verdict_lines(per_seed, None)
  strongest = [ln for ln in lines if ln.startswith("Against the strongest control")]
  assert len(strongest) == 2  # probe and finetune
  ft = next(ln for ln in strongest if ": finetune AUC" in ln)
  pr = next(ln for ln in strongest if ": probe AUC" in ln)
  assert "**above**" in ft and "**a tie**" in pr, (ft, pr)
  # the stated numbers are the paired difference and its bootstrap std, and z = diff / sigma
  c = verdict.compare(per_seed, "finetune", "observables_gbt", None)
  assert f"{c['diff']:+.4f} ± {c['sigma']:.4f}" in ft and f"{c['diff'] / c['sigma']:+.1f}σ" in ft
  assert "paired bootstrap on the same 400 test jets" in ft
  # the pairwise comparisons of the records (probe vs probe_random, finetune vs scratch)
  assert any(ln.startswith("probe AUC") and "vs probe_random" in ln for ln in lines)
  assert any(ln.startswith("finetune AUC") and "vs scratch" in ln for ln in lines)
  # a tie is |diff| <= 2 sigma, exactly
  assert verdict.call({"diff": 0.02, "sigma": 0.01}) == "a tie"
  assert verdict.call({"diff": -0.0201, "sigma": 0.01}) == "below"


def test_verdict_with_seeds_uses_the_larger_of_bootstrap_and_seed_spread(tmp_path):
  per_seed = synthetic(tmp_path, {"finetune": 1.6, "scratch": 1.5}, seeds=(0, 1, 2))
  c = verdict.compare(per_seed, "finetune", "scratch", None)
  diffs, boots = [], []
  for res in per_seed:
    d = np.load(os.path.join(res["workdirs"]["finetune@all"], "test_scores.npz"))
    e = np.load(os.path.join(res["workdirs"]["scratch@all"], "test_scores.npz"))
    dd, ss = verdict.paired_auc_difference(d["label"], d["score"], e["score"],
                                           seed=res["seed"])
    diffs.append(dd)
    boots.append(ss)
  assert c["n_seeds"] == 3 and abs(c["diff"] - np.mean(diffs)) < 1e-12
  assert abs(c["sigma_seeds"] - np.std(diffs, ddof=1) / np.sqrt(3)) < 1e-12
  assert abs(c["sigma_boot"] - np.sqrt(np.sum(np.square(boots))) / 3) < 1e-12
  assert c["sigma"] == max(c["sigma_seeds"], c["sigma_boot"])


def fake_args(tmp_path):
  return argparse.Namespace(data=str(tmp_path / "data"), pretrain_data=str(tmp_path / "data"),
                            model="mae", variant="tiny", tokens="sparse", seeds="0",
                            argv=["--data", "x"])


META = {"image_shape": [25, 25, 3], "format": "test", "label_names": ["QCD", "top"],
        "splits": {"train": {"num_examples": 8}, "validation": {"num_examples": 4},
                   "test": {"num_examples": 4, "label_counts": {"0": 2, "1": 2}}}}


def test_report_of_regression_stages_only_has_no_classification_section(tmp_path):
  reg = {"test/examples": 4.0, **{f"test/{t}_{k}": 1.0 for t in ("jet_mass", "jet_pt")
                                  for k in ("mae", "resolution", "bias", "r2")}}
  per_seed = [{"seed": 0, "by_labelled": {"all": {"regress_finetune": reg,
                                                  "regress_observables": reg}},
               "workdirs": {}}]
  root = tmp_path / "r"
  report.write_report(str(root), fake_args(tmp_path), per_seed, META, META,
                      {"regress_finetune": 1.0}, [None])
  text = (root / "report.md").read_text()
  assert "## Regression (test split)" in text and "| regress_observables | jet_mass |" in text
  assert "calibrated on the train split" in text  # the record's description
  for absent in ("## Classification", "Bootstrap std", "roc_curves.png", "Incomplete run"):
    assert absent not in text, absent
  assert not any(ln.startswith("test AUC") for ln in report.summary_lines(per_seed, [None]))
  # a report written without every requested stage says which are missing
  missing = protocol.missing_stages(per_seed, ["regress_finetune", "regress_scratch"], [None])
  assert missing == ["seed 0: regress_scratch"]
  report.write_report(str(root), fake_args(tmp_path), per_seed, META, META, {}, [None],
                      missing=missing)
  assert "**Incomplete run**: these requested stages have no results and are not in the " \
         "tables: seed 0: regress_scratch." in (root / "report.md").read_text()


def test_report_names_the_classes_and_says_which_is_signal(tmp_path):
  per_seed = synthetic(tmp_path / "w", {"finetune": 2.0, "observables": 1.0})
  root = tmp_path / "r"
  report.write_report(str(root), fake_args(tmp_path), per_seed, META, META, {}, [None])
  text = (root / "report.md").read_text()
  assert "Signal: **top** (label 1), background: **QCD** (label 0)" in text
  assert "| resnet |" not in text and "not measured (resnet did not run)" in text
  compression = text[text.index("## Compression"):text.index("## Runtime")]
  assert "| same |" not in compression and "n/a" not in compression


def test_one_class_split_fails_before_training(tmp_path):
  meta = json.loads(json.dumps(META))
  meta["splits"]["validation"]["label_counts"] = {"0": 4, "1": 0}
  with pytest.raises(UsageError, match=r"the validation split holds one class only .*'0': 4"):
    protocol.check_classes(meta, "DATA", ["pretrain", "finetune"])
  protocol.check_classes(meta, "DATA", ["pretrain", "regress_finetune"])  # no classifier


def test_every_stage_is_one_record():
  # the views are derived from the one table; every control controls for a stage that exists
  assert stages.STAGES == tuple(s.name for s in stages.TABLE)
  for record in stages.TABLE:
    assert bool(record.config) != bool(record.run), record.name
    assert not record.run or callable(getattr(controls, record.run, None)), record.run
    assert not record.controls or record.controls in stages.BY_NAME
    for other in record.versus:
      assert other == stages.STRONGEST or other in stages.BY_NAME
  assert stages.CONTROL_OF == {"probe_random": "probe", "scratch": "finetune",
                               "regress_scratch": "regress_finetune"}


def test_a_stopped_stage_stops_the_protocol_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
  """finetune finishes, scratch is stopped by a signal at step 4: the protocol stops with the
  resume command, observables do not run, no report; the rerun reuses finetune, resumes
  scratch from its checkpoint and writes the report."""
  from helpers import converted_dataset
  from mae_jax import checkpoint, trainer
  data = converted_dataset(tmp_path, n=(24, 8, 8))
  root = tmp_path / "p"
  calls = []

  def fake_train(config, workdir):
    stage = os.path.basename(workdir)
    calls.append(stage)
    if stage == "scratch" and not os.path.isdir(os.path.join(workdir, "checkpoints")):
      os.makedirs(os.path.join(workdir, "checkpoints", "4"))
      return {"preempted_at": 4, "skipped_steps": 0}
    final = {"test/auc": 0.6, "test/auc_std": 0.1, "test/accuracy": 0.5, "test/examples": 8.0}
    os.makedirs(workdir, exist_ok=True)
    checkpoint.write_json(os.path.join(workdir, "final_metrics.json"), final)
    return final
  monkeypatch.setattr(trainer, "train_and_evaluate", fake_train)
  argv = ["--data", data, "--root", str(root), "--stages", "finetune,scratch,observables",
          "--steps", "finetune=6"]
  with pytest.raises(stages.StageStopped) as e:
    protocol.main(argv)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("seed 0: scratch stopped at step 4")
  assert msg.endswith("resume with: python -m mae_jax.protocol " + " ".join(argv))
  assert calls == ["finetune", "scratch"]
  assert not (root / "seed0" / "observables").exists() and not (root / "report.md").exists()
  # the command line: one line on stderr, exit status 3
  monkeypatch.setattr("sys.argv", ["mae-jax-protocol"] + argv)
  os.rmdir(root / "seed0" / "scratch" / "checkpoints" / "4")
  os.rmdir(root / "seed0" / "scratch" / "checkpoints")
  capsys.readouterr()
  with pytest.raises(SystemExit) as ex:
    protocol.cli()
  err = capsys.readouterr().err.strip().splitlines()
  assert ex.value.code == 3 and len(err) == 1 and "scratch stopped at step 4" in err[0]
  protocol.main(argv)
  out = capsys.readouterr().out
  assert "seed 0: finetune: reusing the finished run" in out
  assert "seed 0: scratch: resuming from step 4 of 6" in out  # scratch takes finetune's steps
  assert (root / "report.md").exists()


def test_a_finished_run_of_other_settings_is_refused_not_reused(tmp_path, monkeypatch):
  """Reuse is for the same settings only: a rerun in the same --root with another budget or
  another model is one clear error naming the directory, not the old numbers."""
  from helpers import converted_dataset
  from mae_jax import checkpoint, trainer

  def fake_train(config, workdir):
    checkpoint.write_config(workdir, config)
    final = {"test/auc": 0.6, "test/auc_std": 0.1, "test/accuracy": 0.5, "test/examples": 8.0}
    checkpoint.write_json(os.path.join(workdir, "final_metrics.json"), final)
    return final
  monkeypatch.setattr(trainer, "train_and_evaluate", fake_train)
  data = converted_dataset(tmp_path, n=(24, 8, 8))
  argv = ["--data", data, "--root", str(tmp_path / "p"), "--stages", "finetune"]
  protocol.main(argv + ["--steps", "finetune=6"])
  protocol.main(argv + ["--steps", "finetune=6"])  # the same settings: reused
  with pytest.raises(UsageError, match=r"p/seed0/finetune holds a finished .* of 6 steps, not 8"):
    protocol.main(argv + ["--steps", "finetune=8"])
  with pytest.raises(UsageError, match=r"holds a run with a different 'model'"):
    protocol.main(argv + ["--steps", "finetune=6", "--finetune.model.drop_path=0.3"])


def test_controls_without_training_regression_and_trees_only(tmp_path, capsys):
  """Only non-trainer stages: the calorimeter-mass regression control and the trees. The
  report has the regression table and a classification table of the trees only; the
  calibration is the least-squares line of the train split's calo_mass against jet_mass
  (scikit-learn's LinearRegression on the h5 file's raw images as the reference)."""
  import h5py
  from sklearn.linear_model import LinearRegression
  from helpers import converted_dataset
  from mae_jax.evaluate import baselines
  data = converted_dataset(tmp_path, n=(32, 12, 12))
  root = tmp_path / "p"
  protocol.main(["--data", data, "--root", str(root),
                 "--stages", "regress_observables,observables_gbt",
                 "--trees-grid", "learning_rate=0.1,0.3;max_iter=10;max_leaf_nodes=7"])
  text = (root / "report.md").read_text()
  assert "| regress_observables | jet_mass |" in text and "| observables_gbt |" in text
  assert "| finetune |" not in text and "Reconstruction (" not in text
  final = json.load(open(root / "seed0" / "regress_observables" / "final_metrics.json"))
  with h5py.File(tmp_path / "small.h5") as f:
    from mae_jax.data import meta as meta_lib
    x, names = baselines.observables(f["train_jet"][:], meta_lib.load_meta(data)["channel_names"])
    mass = f["train_meta"][:, 1]
  ref = LinearRegression().fit(x[:, names.index("calo_mass"), None], mass)
  cal = final["calibration"]["jet_mass"]
  assert abs(cal["slope"] / ref.coef_[0] - 1) < 1e-6 and abs(cal["intercept"] - ref.intercept_) \
      < 1e-4 * (1 + abs(ref.intercept_)), (cal, ref.coef_, ref.intercept_)
  gbt = json.load(open(root / "seed0" / "observables_gbt" / "final_metrics.json"))
  best = max(gbt["grid"], key=lambda g: g["validation_auc"])
  assert all(gbt["selected"][k] == best[k] for k in gbt["selected"])


def test_ctrl_c_in_a_stage_stops_the_protocol_in_one_line(tmp_path, monkeypatch):
  from helpers import converted_dataset
  from mae_jax import trainer
  data = converted_dataset(tmp_path, n=(16, 8, 8))

  def interrupted(config, workdir):
    os.makedirs(os.path.join(workdir, "checkpoints", "2"))
    raise KeyboardInterrupt
  monkeypatch.setattr(trainer, "train_and_evaluate", interrupted)
  with pytest.raises(stages.StageStopped, match=r"^seed 0: scratch stopped at step 2 .*resume "
                     r"with: python -m mae_jax.protocol --data"):
    protocol.main(["--data", data, "--root", str(tmp_path / "p"), "--stages", "scratch,resnet"])
  assert not (tmp_path / "p" / "seed0" / "resnet").exists()


def test_labelled_all_is_the_full_label_ceiling_in_the_unsized_workdir():
  args, _, _ = protocol.parse_args(["--data", "d", "--root", "r", "--labelled", "100,all,10"])
  assert args.sizes == [10, 100, None]  # 'all' last: the largest set, the report's main size
  # 'all' runs where a run without --labelled puts its stages, so either reuses the other
  assert stages.run_dir("r", 0, None, "scratch") == os.path.join("r", "seed0", "scratch")
  assert stages.size_key(None) == stages.size_key("all") == "all"
  with pytest.raises(UsageError, match="--labelled '10,most'"):
    protocol.parse_args(["--data", "d", "--root", "r", "--labelled", "10,most"])


def test_an_undefined_reconstruction_measure_is_a_dash(tmp_path):
  """log1p_zscore moves empty pixels away from 0, so 'MSE empty' has no pixels (None in
  reconstruction.json): the report shows '–' there, the other numbers as measured."""
  per_seed = synthetic(tmp_path / "w", {"finetune": 2.0, "observables": 1.0})
  per_seed[0]["recon"] = {"validation": {
      "mse_masked": 5.2919, "mse_masked_zeros": 5.5699, "skill_masked": 0.0499,
      "mse_occupied": 5.2919, "mse_occupied_zeros": 5.5699, "skill_occupied": 0.0499,
      "mse_empty": None, "occupied_fraction": 1.0}}
  per_seed[0]["normalization"] = "log1p_zscore"
  root = tmp_path / "r"
  report.write_report(str(root), fake_args(tmp_path), per_seed, META, META, {}, [None])
  assert ("| validation | 5.29190 | 5.56990 | 0.050 | 5.29190 | 5.56990 | 0.050 | – | 1.0000 |"
          in (root / "report.md").read_text())
