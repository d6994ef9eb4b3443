"""Issue 26's pretraining levers, each tried alone and judged on the VALIDATION split (the
test split is never read here, so the lever chosen can then be scored once on test).

One pretraining per lever (`python -m mae_jax.protocol --stages pretrain`, the decisive run's
recipe and data, a shorter budget), then on the labelled set's validation jets:
  - reconstruction skill (1 - masked MSE / predict-zeros; pixel targets only),
  - a linear probe on the frozen encoder's pooled features (the project's float64 logistic
    regression, l2=1, on standardised features) trained on 100 and 1,000 class-balanced
    labelled train jets (the protocol's nested subsets) — what the pretrained features hold,
  - the trees on [observables + those features] with every train jet (fixed hyper-parameters:
    the decisive run's choice), beside the same trees on the observables alone,
  - the same for the baseline's encoder at its random initialisation (the control),
and each lever's difference to the lever it is compared with (`LEVERS`: baseline, or
pred_zeros for the changes tried on top of it) in units of its paired bootstrap std (same jets).

  python benchmarks/levers.py --out workdirs/levers --steps 500 [--levers baseline,reflect]
      [--data DIR --pretrain-data DIR --cache DIR]
Writes OUT/levers.md (table), OUT/levers.json and OUT/scores.npz (each lever's validation
scores, for paired comparisons across sweeps); finished pretrainings are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

# lever name -> (protocol overrides, the lever it is compared with). The recipe as it was
# when the sweep ran used the reference's xavier decoder init; the recipe has since adopted
# pred_init=zeros (the winner), so `baseline` pins xavier to stay the same experiment. Three
# runs of the first sweep started after the recipe's switch and so had the zero init plus
# their change: they are named for it and compared with pred_zeros (one change each).
XAVIER = ["--pretrain.model.pred_init=xavier"]
ZEROS = ["--pretrain.model.pred_init=zeros"]
LEVERS = {
    "baseline": (XAVIER, None),
    "pred_zeros": (ZEROS, "baseline"),
    "reflect": (XAVIER + ["--pretrain.data.reflect=both"], "baseline"),
    "mask_0.5": (XAVIER + ["--pretrain.model.mask_ratio=0.5"], "baseline"),
    "zeros+dec_depth_2": (ZEROS + ["--pretrain.model.dec_depth=2"], "pred_zeros"),
    "zeros+zscore": (ZEROS + ["--config.data.normalization=log1p_zscore"], "pred_zeros"),
    "zeros+codes": (ZEROS + ["--pretrain.task.target=codes"], "pred_zeros"),
}
DATA = "data_cache/boosted_top_18000_seed2_split20-20-60_tfds"
POOL = "data_cache/boosted_top_pool6000_seed3_tfds"
# the decisive run's recipe (launch/decisive.sh through label_efficiency.sh)
RECIPE = ["--variant", "tiny", "--tokens", "sparse", "--seeds", "0", "--labelled", "1000",
          "--recon-splits", "validation", "--config.batch_size=64", "--pretrain.lr=5e-3"]
TREES = {"learning_rate": 0.1, "max_iter": 300, "max_leaf_nodes": 15, "min_samples_leaf": 20}
SIZES = (100, 1000)


def protocol_argv(a, lever):
  return (["--data", a.data, "--pretrain-data", a.pretrain_data,
           "--root", os.path.join(a.out, lever), "--stages", "pretrain",
           "--steps", f"pretrain={a.steps}", f"--pretrain.warmup_steps={a.warmup}"]
          + RECIPE + LEVERS[lever][0])


def pretrain(a, lever):
  """Runs (or reuses) the lever's pretraining in a subprocess; returns its wall seconds."""
  t0 = time.time()
  log = os.path.join(a.out, f"{lever}.log")
  os.makedirs(a.out, exist_ok=True)
  with open(log, "a") as f:
    rc = subprocess.call([sys.executable, "-m", "mae_jax.protocol"] + protocol_argv(a, lever),
                         stdout=f, stderr=subprocess.STDOUT)
  if rc:
    raise SystemExit(f"levers: {lever}'s pretraining failed (rc {rc}); see {log}")
  pre = os.path.join(a.out, lever, "seed0", "pretrain")
  with open(os.path.join(pre, "config.json")) as f:
    cfg = json.load(f)
  same_data = os.path.abspath(cfg["data"]["dir"]) == os.path.abspath(a.pretrain_data)
  if cfg["total_steps"] != a.steps or not same_data:
    raise SystemExit(f"levers: {pre} holds a pretraining of {cfg['total_steps']} steps on "
                     f"{cfg['data']['dir']}, not --steps {a.steps} on {a.pretrain_data}: "
                     "use another --out")
  # the training's own seconds (a reused run keeps what it took when it ran)
  with open(os.path.join(pre, "final_metrics.json")) as f:
    return float(json.load(f).get("train_seconds") or time.time() - t0)


def stage_configs(a, lever):
  """(protocol args, stage name -> config) as the protocol builds them for this lever."""
  from mae_jax import protocol
  from mae_jax.protocol import stages
  args, overrides, per_stage = protocol.parse_args(protocol_argv(a, lever))
  return args, lambda st: stages.stage_config(st, args, 0, 1000, overrides, per_stage,
                                              args.steps_by_stage)


def fit_trees(x, y, xv, yv):
  """The trees at the fixed TREES point (fitted on train; the one-point grid scores xv)."""
  from mae_jax.evaluate import trees
  return trees.fit_selected(x, y, xv, yv, 0, {k: [v] for k, v in TREES.items()})[0]


def features(a, lever):
  """Pooled frozen-encoder features of train and validation (cached next to the checkpoint)."""
  from mae_jax.protocol import controls, stages
  args, config_for = stage_configs(a, lever)
  job = stages.Job(stages.BY_NAME["observables_encoder"], 0, 1000, "", args, a.cache, config_for)
  return {s: controls.encoder_features(job, s) for s in ("train", "validation")}


def random_features(a):
  """The control: the same features from the baseline's encoder at its random initialisation
  (the pretraining's own step-0 parameters, seed 0), cached in OUT/random_features_*.npz."""
  from mae_jax import experiment, parallel
  from mae_jax.protocol import controls
  paths = {s: os.path.join(a.out, f"random_features_{s}.npz") for s in ("train", "validation")}
  if all(os.path.exists(p) for p in paths.values()):
    return {s: tuple(np.load(p)[k] for k in ("x", "y")) for s, p in paths.items()}
  _, config_for = stage_configs(a, "baseline")
  pre, probe = config_for("pretrain"), config_for("probe")
  image_shape = experiment.make_pipeline(probe, a.data, train=False).image_shape
  model = experiment.build_model(pre, image_shape)
  params = experiment.create_state(pre, model, parallel.make_mesh(pre.mesh),
                                   image_shape).state["params"]
  out = {}
  for split, path in paths.items():
    out[split] = controls.pooled_features(pre, probe, a.data, split, params)
    np.savez(path, x=out[split][0], y=out[split][1])
  return out


def evaluate(a, lever, feats, obs, recon=True):
  from mae_jax.data import pipeline as pipeline_lib
  from mae_jax.evaluate import baselines, trees
  (x, y), (xv, yv) = feats["train"], feats["validation"]
  for split, (f, labels) in feats.items():
    if not np.array_equal(labels, obs[split]["y"]):
      raise RuntimeError(f"{lever}: features and observables of {split} differ in jet order")
  scores = {}
  pipe = pipeline_lib.Pipeline(a.data, "none")
  for n in SIZES:
    keep = pipe.labelled_subset("train", n, 0)
    scores[f"probe_{n}"] = baselines.LogisticRegression().fit(x[keep], y[keep]) \
        .decision_function(xv)
  joined = lambda split, f: np.concatenate([obs[split]["x"], f], axis=1)
  model = fit_trees(joined("train", x), y, joined("validation", xv), yv)
  scores["obs_encoder_trees"] = trees.score(model, joined("validation", xv))
  if not recon:
    return scores, {}
  with open(os.path.join(a.out, lever, "seed0", "pretrain", "reconstruction.json")) as f:
    return scores, json.load(f)["validation"]


def sigmas(d, sd):
  return f"{d / sd:+.1f}σ" if sd > 0 else "σ = 0"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="workdirs/levers")
  p.add_argument("--steps", type=int, default=500)
  p.add_argument("--warmup", type=int, default=50)
  p.add_argument("--levers", default=",".join(LEVERS))
  p.add_argument("--data", default=DATA)
  p.add_argument("--pretrain-data", default=POOL)
  p.add_argument("--cache", default="workdirs/decisive/cache",
                 help="the observables' cache (computed if absent)")
  a = p.parse_args(argv)
  levers = [s for s in a.levers.split(",") if s]
  unknown = sorted(set(levers) - set(LEVERS))
  if unknown:
    raise SystemExit(f"--levers: {unknown}; choose from {list(LEVERS)}")
  levers = [x for x in LEVERS if x in levers]  # references first
  from mae_jax.evaluate import metrics, trees
  from mae_jax.protocol import measure, verdict
  obs = {s: measure.observable_table(a.data, s, a.cache) for s in ("train", "validation")}
  yv = obs["validation"]["y"].astype(np.int64)
  model = fit_trees(obs["train"]["x"], obs["train"]["y"], obs["validation"]["x"], yv)
  obs_trees = trees.score(model, obs["validation"]["x"])
  results = {}
  scores, _ = evaluate(a, "random encoder", random_features(a), obs, recon=False)
  results["random encoder"] = {"scores": scores, "recon": {}, "seconds": 0.0}
  for lever in levers:
    seconds = pretrain(a, lever)
    scores, recon = evaluate(a, lever, features(a, lever), obs)
    results[lever] = {"scores": scores, "recon": recon, "seconds": seconds}
    print(f"[levers] {lever}: {seconds:.0f} s, " + ", ".join(
        f"{k} {metrics.roc_auc(yv, s):.4f}" for k, s in scores.items()), flush=True)
  rows, out = [], {"steps": a.steps, "validation_jets": int(len(yv)), "levers": {}}
  keys = [f"probe_{n}" for n in SIZES] + ["obs_encoder_trees"]
  for lever, r in results.items():
    entry = {"pretrain_seconds": r["seconds"]}
    skill = r["recon"].get("skill_masked")
    entry["recon_skill"] = skill
    # skill is relative to predict-zeros in the lever's own target units: other units for
    # zscore (normalisation) and codes (pixels decoded from code centroids)
    unit = {"zeros+zscore": " (z-scored units)", "zeros+codes": " (code centroids)"}.get(lever, "")
    ref = "baseline" if lever == "random encoder" else LEVERS[lever][1]
    ref = ref if ref in results else None  # its reference not run (e.g. a budget point alone)
    cells = [lever, ref or "–", "–" if skill is None else f"{skill:.3f}{unit}"]
    for k in keys:
      auc = metrics.roc_auc(yv, r["scores"][k])
      if ref is None:
        cells.append(f"{auc:.4f}")
        entry[k] = {"auc": auc}
      else:
        d, sd = verdict.paired_auc_difference(yv, r["scores"][k], results[ref]["scores"][k])
        cells.append(f"{auc:.4f} ({d:+.4f} = {sigmas(d, sd)})")
        entry[k] = {"auc": auc, "compared_with": ref, "difference": d, "std": sd}
    d, sd = verdict.paired_auc_difference(yv, r["scores"]["obs_encoder_trees"], obs_trees)
    cells.append(f"{d:+.4f} ({sigmas(d, sd)})")
    entry["encoder_adds_to_trees"] = {"difference": d, "std": sd}
    cells.append(f"{r['seconds']:.0f}")
    rows.append("| " + " | ".join(cells) + " |")
    out["levers"][lever] = entry
  out["observable_trees_validation_auc"] = metrics.roc_auc(yv, obs_trees)
  table = "\n".join([
      f"Validation split ({len(yv)} jets), {a.steps} pretraining steps per lever; in brackets: "
      "the difference to the lever in 'compared with', in units of its paired bootstrap std "
      "('random encoder': the baseline's encoder at its initialisation, no pretraining).",
      "",
      "| lever | compared with | recon. skill | probe AUC, 100 labels | probe AUC, 1,000 labels "
      "| trees on obs. + encoder | encoder adds to the trees | pretrain s |",
      "|---|---|---|---|---|---|---|---|", *rows, "",
      f"Trees on the observables alone: validation AUC "
      f"{out['observable_trees_validation_auc']:.4f}.",
      f"Command: python benchmarks/levers.py {' '.join(argv if argv is not None else sys.argv[1:])}"])
  with open(os.path.join(a.out, "levers.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(a.out, "levers.json"), "w") as f:
    json.dump(out, f, indent=1)
  # every lever's validation scores, for paired comparisons across sweeps (e.g. budgets)
  np.savez(os.path.join(a.out, "scores.npz"), y=yv, obs_trees=obs_trees,
           **{f"{lever}/{k}": v for lever, r in results.items() for k, v in r["scores"].items()})
  print(table)


if __name__ == "__main__":
  main()
