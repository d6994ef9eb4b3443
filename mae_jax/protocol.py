r"""The downstream protocol in one command: pretrain -> reconstruction -> probe ->
finetune -> scratch -> ResNet baseline, then report.md with figures.

  python -m mae_jax.protocol --data data_cache/boosted_top_3000_tfds --root workdirs/protocol \
      --variant tiny --seeds 0,1 --steps pretrain=300,probe=200,finetune=200,scratch=200,resnet=200 \
      --config.batch_size=32 [--select finetune.lr=1e-3,4e-3]

Every stage is a config of the one trainer (configs/*.py); `--config.FIELD=VALUE`
overrides go to every stage, `--STAGE.FIELD=VALUE` (e.g. `--pretrain.lr=5e-3`) to one. Workdirs are ROOT/seed{S}/{stage}; a stage whose
workdir already holds `final_metrics.json` is not rerun. Numbers in the report
say which split they come from: classification metrics are on the test split,
evaluated once with the validation-selected checkpoint.

Stages: pretrain, probe, finetune, scratch, resnet, and `probe_random`: the probe
of a randomly initialised, frozen encoder of the same model (what the features
are worth without pretraining; not run by default). The two controls take the steps
and the overrides of the stage they control for (`scratch` those of `finetune`,
`probe_random` those of `probe`), then their own (`scratch=N`, `--scratch.FIELD=V`),
which win; `model_init`, `model_load` and `optim.layer_decay`, which make them controls,
are never inherited.

`--select STAGE.FIELD=V1,V2,...` (repeatable; not for pretrain) runs the stage once per
value in ROOT/seed{S}/{stage}_{FIELD}{V} and keeps, per seed, the value whose
validation-selected checkpoint scores best on the validation split (the test split
plays no part in the choice); the report gives the chosen value.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import numpy as np

from mae_jax import config_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("pretrain", "probe", "finetune", "scratch", "resnet", "probe_random")
DEFAULT_STAGES = ("pretrain", "probe", "finetune", "scratch", "resnet")
CLASSIFY_STAGES = tuple(s for s in STAGES if s != "pretrain")
CONTROL_OF = {"scratch": "finetune", "probe_random": "probe"}  # same budget, random init
# what makes a control a control: never inherited from the stage it controls for
CONTROL_OWN_FIELDS = ("model_init", "model_load", "optim.layer_decay")
CONFIG_FILE = {"pretrain": "pretrain", "probe": "probe", "finetune": "finetune",
               "scratch": "scratch", "resnet": "resnet", "probe_random": "probe"}


def load_stage_config(stage, variant, model, patch):
  path = os.path.join(ROOT, "configs", f"{CONFIG_FILE[stage]}.py")
  spec = importlib.util.spec_from_file_location(stage, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if stage == "resnet":
    return module.get_config("arch=resnet15")
  return module.get_config(f"variant={variant},patch={patch},model={model}")


def reconstruction_report(pretrain_dir, config, splits):
  """Masked/all/occupied/empty MSE, per channel and energy errors on each split."""
  import jax
  from mae_jax import checkpoint, experiment, parallel
  from mae_jax.evaluate import reconstruction as rec

  mesh = parallel.make_mesh(config.mesh)
  pipe = experiment.make_pipeline(config, train=False)
  model = experiment.build_model(config, pipe.image_shape)
  # parameters only (no optimizer state, no manager that could prune the pretrain run)
  params = checkpoint.read_arrays(pretrain_dir, item="params")[0]["params"]

  @jax.jit
  def forward(params, batch, index):
    mask_key, drop_key = experiment.step_keys(config.seed + 1, index)
    (_, aux), _ = experiment.apply_model(model, params, {}, batch, False, mask_key, drop_key)
    return aux["pred"], aux["mask"]

  out = {}
  for split in splits:
    total = rec.init_sums(pipe.image_shape[-1])
    _, it = pipe.eval_iter(split, config.batch_size, config.batch_size)
    for i, batch in enumerate(it):
      pred, mask = jax.device_get(forward(params, parallel.global_batch(batch, mesh), i))
      keep = batch["valid"] > 0
      if config.model.norm_pix_loss:
        pred = rec.denormalize_pred(pred, batch["image"], model.patch)
      sums = rec.reconstruction_sums_jit(batch["image"][keep], np.asarray(pred)[keep],
                                         np.asarray(mask)[keep], patch=model.patch)
      total = rec.accumulate(total, jax.device_get(sums))
    out[split] = rec.finalize(total)
  feats = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method=model.encode),
                         params, jax.ShapeDtypeStruct((1, *pipe.image_shape), np.float32))
  out["feature_width"] = int(feats["mean"].shape[-1])
  return out, pipe.meta


def run_stage(stage, config, workdir):
  """Trains the stage unless its workdir holds final_metrics.json; (metrics, seconds trained)."""
  from mae_jax import trainer
  done = os.path.join(workdir, "final_metrics.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f), 0.0
  t0 = time.time()
  final = trainer.train_and_evaluate(config, workdir)
  return final, time.time() - t0


def parse_selects(items, stages):
  """['finetune.lr=1e-3,4e-3'] -> {'finetune': ('lr', ['1e-3', '4e-3'])}, syntax checked
  (`check_selects` checks the fields against the stage configs)."""
  out = {}
  for item in items:
    key, sep, values = item.partition("=")
    stage, _, field = key.partition(".")
    vals = [v for v in values.split(",") if v]
    if not sep or not field or not vals:
      raise SystemExit(f"--select {item!r}: expected STAGE.FIELD=V1,V2,... "
                       "(e.g. finetune.lr=1e-3,4e-3)")
    if stage not in stages or stage == "pretrain":
      raise SystemExit(f"--select {item!r}: stage {stage!r} is not one of the stages run "
                       f"here that can be selected on validation: "
                       f"{[s for s in stages if s != 'pretrain']}")
    if stage in out:
      raise SystemExit(f"--select: stage {stage!r} given twice; one field per stage")
    out[stage] = (field, vals)
  return out


def check_selects(selects, config_for):
  """Every value of every --select applies to its stage's config (before anything trains)."""
  for stage, (field, values) in selects.items():
    for value in values:
      try:
        config_util.apply_overrides(config_for(stage), [f"--config.{field}={value}"])
      except (ValueError, TypeError, KeyError) as e:
        raise SystemExit(f"--select {stage}.{field}={','.join(values)}: {e}") from None


def format_selected(selected) -> str:
  """[{'lr': '1e-3'}, {'lr': '4e-3'}] (one per seed) -> 'lr=1e-3, lr=4e-3'."""
  return ", ".join(" ".join(f"{k}={v}" for k, v in s.items()) for s in selected if s)


def validation_score(workdir):
  """The trainer's selection metric of the validation-selected checkpoint in `workdir`."""
  path = os.path.join(workdir, "best.json")
  if not os.path.exists(path):
    raise SystemExit(f"--select needs validation scores, but {path} does not exist: the "
                     "stage had no validation split, or its validation score was never finite "
                     "(e.g. AUC on a one-class split)")
  with open(path) as f:
    best = json.load(f)
  if "selection_metric" not in best:
    raise SystemExit(f"{path} predates --select (no 'selection_metric'); delete "
                     f"{workdir} to rerun it")
  return float(best["selection_metric"])


def run_selected(stage, config, workdir, field, values, seed):
  """Runs `stage` once per value of `field`; returns the final metrics of the value with
  the best validation score, with "selected" {field: value} and the whole "grid"; the
  seconds spent training (all values); the chosen value's workdir.

  A value whose run stops on a non-finite loss (nan_policy=stop) scores -inf and is
  recorded in WORKDIR/failed.json, so a rerun does not train it again."""
  from mae_jax import errors
  grid, finals, seconds, dirs = {}, {}, 0.0, {}
  for value in values:
    cfg = config_util.apply_overrides(config.copy_and_resolve_references(), [f"--config.{field}={value}"])
    wd = dirs[value] = f"{workdir}_{field.replace('.', '-')}{value}"
    failed = os.path.join(wd, "failed.json")
    print(f"[protocol] seed {seed}: {stage} {field}={value} -> {wd}", flush=True)
    if not os.path.exists(failed):
      try:
        finals[value], sec = run_stage(stage, cfg, wd)
        seconds += sec
        grid[value] = validation_score(wd)
        continue
      except errors.NonFiniteError as e:
        with open(failed, "w") as f:
          json.dump({"error": str(e)}, f)
    with open(failed) as f:
      print(f"[protocol] seed {seed}: {stage} {field}={value} failed: "
            f"{json.load(f)['error']}", flush=True)
    grid[value] = float("-inf")
  if not finals:
    raise SystemExit(f"--select {stage}.{field}: every value failed (see failed.json in "
                     f"{', '.join(dirs.values())})")
  chosen = max(finals, key=lambda v: grid[v])  # first value wins ties
  print(f"[protocol] seed {seed}: {stage} selected {field}={chosen} "
        f"(validation {', '.join(f'{v}: {grid[v]:.4f}' for v in values)})", flush=True)
  return {**finals[chosen], "selected": {field: chosen}, "grid": grid}, seconds, dirs[chosen]


def count_params(workdir):
  import jax
  from mae_jax import checkpoint
  params, _ = checkpoint.read_arrays(workdir, item="params")
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))


def fmt(values, digits=4):
  vals = [v for v in values if v is not None and np.isfinite(v)]
  if not vals:
    return "n/a"
  if len(vals) == 1:
    return f"{vals[0]:.{digits}f}"
  return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def write_report(root, args, per_seed, recon, meta, timings):
  from mae_jax.evaluate import plots
  os.makedirs(root, exist_ok=True)
  h, w, c = meta["image_shape"]
  width = per_seed[0]["feature_width"]
  raw = h * w * c * 4
  split_bytes = meta.get("stored_bytes_per_jet")

  def col(stage, key):
    return [s[stage].get(key) for s in per_seed if stage in s]

  table = [
      "| model | params | mask ratio | LP acc | LP AUC | FT acc | FT AUC | scratch AUC | ResNet AUC "
      "| recon MSE test | recon MSE train | compression ratio |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
      f"| {args.model}/{args.variant} | {per_seed[0]['params']:,} | {per_seed[0]['mask_ratio']} "
      f"| {fmt(col('probe', 'test/accuracy'))} | {fmt(col('probe', 'test/auc'))} "
      f"| {fmt(col('finetune', 'test/accuracy'))} | {fmt(col('finetune', 'test/auc'))} "
      f"| {fmt(col('scratch', 'test/auc'))} | {fmt(col('resnet', 'test/auc'))} "
      f"| {fmt([r['test']['mse_masked'] for r in recon if 'test' in r], 5)} "
      f"| {fmt([r['train']['mse_masked'] for r in recon if 'train' in r], 5)} "
      f"| {raw / (width * 4):.0f}× |",
  ]
  lines = ["# mae_jax protocol report", "",
           f"Data: `{args.data}` ({meta.get('format')}, image {h}×{w}×{c}; splits "
           + ", ".join(f"{k} {v['num_examples']}" for k, v in meta["splits"].items()) + ").",
           f"Seeds: {args.seeds} (mean ± sample std over seeds where more than one). "
           f"Command: `python -m mae_jax.protocol {' '.join(args.argv)}`.", "",
           "Classification numbers (acc, AUC) are on the **test split**, evaluated once with the "
           "checkpoint selected on the validation split; AUC is exact over the whole split. "
           "Reconstruction MSE is over masked patches, in normalised units "
           f"(`{per_seed[0]['normalization']}`).", "", *table, "",
           "## Classification (test split)", "",
           "| stage | acc | AUC | rejection @50% sig. eff. | rejection @30% | selected step "
           "| selected on validation |", "|---|---|---|---|---|---|---|"]
  classify_stages = [st for st in CLASSIFY_STAGES if st in per_seed[0]]
  for stage in classify_stages:
    chosen = format_selected(col(stage, "selected")) or "–"
    lines.append(f"| {stage} | {fmt(col(stage, 'test/accuracy'))} | {fmt(col(stage, 'test/auc'))} "
                 f"| {fmt(col(stage, 'test/rejection_50'), 1)} | {fmt(col(stage, 'test/rejection_30'), 1)} "
                 f"| {', '.join(str(s) for s in col(stage, 'selected_step'))} | {chosen} |")
  lines += ["", "Bootstrap uncertainties of the first seed (test split, 200 resamples unless "
            "configured): " + ", ".join(
                f"{st} AUC ± {per_seed[0][st].get('test/auc_std', float('nan')):.4f}"
                for st in classify_stages), ""]
  lines += ["## Reconstruction (pretrained MAE, first seed)", "",
            "| split | MSE masked | predict-zeros | skill | MSE all pixels | MSE occupied | "
            "MSE empty | occupied fraction |", "|---|---|---|---|---|---|---|---|"]
  for split, r in recon[0].items():
    lines.append(f"| {split} | {r['mse_masked']:.5f} | {r['mse_masked_zeros']:.5f} | "
                 f"{r['skill_masked']:.3f} | {r['mse_all']:.5f} | {r['mse_occupied']:.5f} | "
                 f"{r['mse_empty']:.5f} | {r['occupied_fraction']:.4f} |")
  names = meta.get("channel_names") or [f"ch{i}" for i in range(c)]
  per_channel_split = "test" if "test" in recon[0] else next(iter(recon[0]))
  lines += ["", f"Per channel ({per_channel_split} split): MSE on masked patches; energy in masked patches, "
            "reconstructed / true (sum over jets) and per-jet relative error mean ± std.", "",
            "| channel | MSE masked | predict-zeros | energy ratio | per-jet rel. error |",
            "|---|---|---|---|---|"]
  r = recon[0][per_channel_split]
  for i, n in enumerate(names):
    lines.append(f"| {n} | {r['mse_masked_per_channel'][i]:.5f} | "
                 f"{r['mse_masked_zeros_per_channel'][i]:.5f} | {r['energy_ratio'][i]:.3f} | "
                 f"{r['energy_rel_mean'][i]:+.3f} ± {r['energy_rel_std'][i]:.3f} |")
  lines += ["", "## Compression", "",
            "| representation | bytes per jet | ratio to raw | downstream score from it alone |",
            "|---|---|---|---|",
            f"| raw image float32 {h}×{w}×{c} | {raw:,} | 1× | ResNet AUC {fmt(col('resnet', 'test/auc'))} |"]
  if split_bytes:
    lines.append(f"| converted TFRecord (zlib) | {split_bytes:,.0f} | {raw / split_bytes:.0f}× | same |")
  for dtype, nbytes in (("float32", 4), ("float16", 2)):
    lines.append(f"| encoder {per_seed[0]['pool']}-pooled feature, {width} × {dtype} | "
                 f"{width * nbytes} | {raw / (width * nbytes):.0f}× | linear probe AUC "
                 f"{fmt(col('probe', 'test/auc'))} |")
  lines += ["", "(float16 features: the probe was trained on float32 features; the float16 row "
            "is storage only.)", "", "## Runtime of each stage (first seed, this machine; a stage chosen by --select: all "
            "its values together; 0 = reused from an earlier run)", "",
            "| stage | seconds |", "|---|---|"]
  for stage, sec in timings.items():
    lines.append(f"| {stage} | {sec:.0f} |")
  lines += ["", "## Figures", ""]
  figs = plots.protocol_figures(root, per_seed[0]["workdirs"])
  lines += [f"![{os.path.basename(f)}]({os.path.relpath(f, root)})" for f in figs]
  with open(os.path.join(root, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(root, "results.json"), "w") as f:
    json.dump({"per_seed": per_seed, "timings": timings}, f, indent=1, default=float)
  return os.path.join(root, "report.md")


def main(argv=None):
  import sys

  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in argv if a.startswith("--config.")]
  per_stage = {st: ["--config." + a[len(f"--{st}."):] for a in argv if a.startswith(f"--{st}.")]
               for st in STAGES}
  rest = [a for a in argv if not a.startswith("--config.")
          and not any(a.startswith(f"--{st}.") for st in STAGES)]
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", required=True, help="converted dataset directory")
  p.add_argument("--root", required=True, help="directory for all stages' workdirs and the report")
  p.add_argument("--variant", default="tiny")
  p.add_argument("--model", default="mae", help="MAE family: mae, depthwise_mae, convstem_mae, convmae, channel_mae")
  p.add_argument("--patch", type=int, default=5)
  p.add_argument("--seeds", default="0")
  p.add_argument("--steps", default="pretrain=300,probe=200,finetune=200,scratch=200,resnet=200")
  p.add_argument("--stages", default=",".join(DEFAULT_STAGES), help=f"any of {STAGES}")
  p.add_argument("--select", action="append", default=[], metavar="STAGE.FIELD=V1,V2",
                 help="run STAGE once per value, keep the best on the validation split")
  p.add_argument("--recon-splits", default=None,
                 help="comma-separated splits whose reconstruction error is measured after "
                      "pretraining (default: train and test, those the dataset has); a full "
                      "pass over each, so on a real train split of millions of jets 'test' "
                      "alone saves hours")
  args = p.parse_args(rest)
  args.argv = argv
  steps = dict(kv.split("=") for kv in args.steps.split(","))
  stages = [s for s in args.stages.split(",") if s]
  unknown = set(stages) - set(STAGES)
  if unknown:
    raise SystemExit(f"unknown stages {sorted(unknown)}; known: {STAGES}")

  recon_splits = check_recon_splits(args.recon_splits, args.data)
  selects = parse_selects(args.select, stages)
  check_selects(selects, lambda st: load_stage_config(st, args.variant, args.model, args.patch))

  per_seed, recon, timings = [], [], {}
  meta = None
  for seed in [int(s) for s in args.seeds.split(",")]:
    results = {}
    pre_dir = os.path.join(args.root, f"seed{seed}", "pretrain")
    for stage in stages:
      config = load_stage_config(stage, args.variant, args.model, args.patch)
      config.data.dir = args.data
      config.seed = seed
      n_steps = steps.get(stage, steps.get(CONTROL_OF.get(stage)))
      if n_steps is not None:
        config.total_steps = int(n_steps)
        config.warmup_steps = min(config.warmup_steps, max(config.total_steps // 10, 1))
        config.eval_every = max(config.total_steps // 2, 1) if stage != "pretrain" else 0
      if stage in ("probe", "finetune"):
        config.model_init = pre_dir
      # a control is the stage it controls for in every respect but the initialisation
      like = [a for a in per_stage.get(CONTROL_OF.get(stage), [])
              if a[len("--config."):].split("=", 1)[0] not in CONTROL_OWN_FIELDS]
      config_util.apply_overrides(config, overrides + like + per_stage[stage])
      workdir = os.path.join(args.root, f"seed{seed}", stage)
      if stage in selects:
        final, seconds, workdir = run_selected(stage, config, workdir, *selects[stage], seed)
      else:
        print(f"[protocol] seed {seed}: {stage} -> {workdir}", flush=True)
        final, seconds = run_stage(stage, config, workdir)
      results[stage] = final
      results.setdefault("workdirs", {})[stage] = workdir
      if seed == int(args.seeds.split(",")[0]):
        timings[stage] = seconds
      if stage == "pretrain":
        results["params"] = count_params(workdir)
        results["mask_ratio"] = config.model.mask_ratio
        results["normalization"] = config.data.normalization
        t0 = time.time()
        r, meta = reconstruction_report(workdir, config, recon_splits)
        results["feature_width"] = r.pop("feature_width")
        recon.append(r)
        results["recon"] = {split: {k: float(v) for k, v in d.items() if np.ndim(v) == 0}
                            for split, d in r.items()}
        if seed == int(args.seeds.split(",")[0]):
          timings["reconstruction"] = time.time() - t0
      if stage in ("probe", "probe_random"):
        results["pool"] = config.model.pool
    results.setdefault("pool", "mean")
    per_seed.append(results)
  meta = dict(meta or {})
  meta["stored_bytes_per_jet"] = _stored_bytes_per_jet(args.data)
  path = write_report(args.root, args, per_seed, recon, meta, timings)
  print(f"[protocol] report: {path}")


def check_recon_splits(value, data_dir):
  """'test,validation' -> those splits, each checked against the dataset (an error names the
  missing one); None -> train and test, whichever the dataset has."""
  available = _splits(data_dir)
  if value is None:
    splits = [s for s in ("train", "test") if s in available]
    if not splits:
      raise SystemExit(f"{data_dir} has neither a train nor a test split (its splits: "
                       f"{sorted(available)}); pick one with --recon-splits")
    return splits
  splits = [s for s in value.split(",") if s]
  if not splits:
    raise SystemExit("--recon-splits: give at least one split, e.g. test")
  unknown = [s for s in splits if s not in available]
  if unknown:
    raise SystemExit(f"--recon-splits {value!r}: {unknown} not in the dataset {data_dir} "
                     f"(its splits: {sorted(available)})")
  return splits


def _splits(data_dir):
  from mae_jax.data import meta as meta_lib
  return meta_lib.load_meta(data_dir)["splits"]


def _stored_bytes_per_jet(data_dir):
  info = json.load(open(os.path.join(data_dir, "dataset_info.json")))
  n = sum(int(x) for s in info["splits"] for x in s["shardLengths"])
  size = sum(os.path.getsize(os.path.join(data_dir, f)) for f in os.listdir(data_dir)
             if ".tfrecord-" in f)
  return size / max(n, 1)


def cli():
  """Entry point (`mae-jax-protocol`): quiet absl logging for this process only."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # progress lines are printed; TFDS chatter is not
  main()


if __name__ == "__main__":
  cli()
