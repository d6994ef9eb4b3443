r"""The downstream protocol in one command: pretrain -> reconstruction -> probe (and the
random-encoder probe) -> finetune -> scratch -> ResNet -> observable baseline, then
report.md with figures (also installed as `mae-jax-protocol`).

  python -m mae_jax.protocol --data data_cache/boosted_top_3000_tfds --root workdirs/protocol \
      [--seeds 0,1] [--steps pretrain=1000,probe=200,finetune=200,resnet=200] \
      [--select finetune.lr=1e-3,4e-3] [--pretrain-data POOL_DIR] [--labelled 100,300,1000]

With no flags it runs the recipe that learns on a CPU budget (protocol/recipe.py: sparse
tokens, 1,500 pretraining and 300 downstream steps, batch 64, the stages' lrs); every
flag below replaces a part of it.

Every stage is a config of the one trainer (configs/*.py); `--config.FIELD=VALUE`
overrides go to every stage, `--STAGE.FIELD=VALUE` (e.g. `--pretrain.lr=5e-3`) to one.
Workdirs are ROOT/seed{S}/{stage} (ROOT/seed{S}/n{N}/{stage} for a labelled-set size N);
a stage whose workdir holds `final_metrics.json` is not rerun. Classification numbers
are on the test split, evaluated once with the validation-selected checkpoint.

Stages (`--stages`; one record each in `stages.TABLE`, protocol/stages.py): pretrain,
probe, probe_random (the probe of a randomly initialised, frozen encoder: what the features
are worth without pretraining), finetune, scratch (the finetune model and budget from
random initialisation), resnet, observables (logistic regression on image-derived jet
observables), observables_gbt (gradient-boosted trees on them, chosen on validation),
observables_encoder (the same trees on the observables and the frozen pretrained
encoder's features); regress_probe, regress_finetune, regress_scratch and
regress_observables (jet mass and pT; the last is the calorimeter mass and E_T sum
calibrated on train). The controls take the steps and the overrides of the stage they
control for, then their own. The report shows the sections of the stages that ran; its
verdict compares probe and finetune with the strongest control that ran (highest test AUC
of observables, observables_gbt, scratch, resnet), each difference in units of its
paired-bootstrap std (and the seeds' standard error), within 2 sigma a tie.

A stage stopped by SIGTERM / Ctrl-C stops the protocol (one line with the command that
resumes, exit status 3; no later stage, no report); a rerun reuses finished stages and
resumes stopped ones from their last checkpoint, and says which.

`--pretrain-data DIR`: pretrain on another converted dataset (labels ignored, -1
allowed); the downstream stages use `--data`. `--labelled 100,300,...,all`: run the
downstream stages (and the observable controls) once per size on a class-balanced,
seeded, nested subset of the train split ('all': every labelled jet, the full-label
ceiling of scratch and resnet, in ROOT/seed{S}/{stage}); validation and test splits stay whole; the
report adds AUC against the number of labelled jets.

`--select STAGE.FIELD=V1,V2,...` (repeatable; not for pretrain) runs the stage once per
value in ROOT/seed{S}/{stage}_{FIELD}{V} and keeps, per seed, the value whose
validation-selected checkpoint scores best on the validation split (the test split
plays no part in the choice); the report gives the chosen value.

`--stages compression` (not in the default list) trains the compressive MAE and writes a
rate-distortion table of the decoded test jets beside zero-suppressed storage (jet mass,
pT, and the observable trees' AUC on the decoded jets); `--compression-jets N` scores only
the first N test jets (launch/compression.sh runs it at several latent budgets).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from mae_jax.errors import UsageError
from mae_jax.protocol import measure, recipe, report, stages
from mae_jax.protocol.report import fmt  # noqa: F401 (part of the API)
from mae_jax.protocol.stages import (CLASSIFY_STAGES, CONTROL_OF, DEFAULT_STAGES,  # noqa: F401
                                     STAGES, check_selects, format_selected,
                                     load_stage_config, parse_selects, validation_score)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
  """The module's docstring as written, and each option's default."""


def parse_args(argv):
  overrides = [a for a in argv if a.startswith("--config.")]
  per_stage = {st: ["--config." + a[len(f"--{st}."):] for a in argv if a.startswith(f"--{st}.")]
               for st in STAGES}
  rest = [a for a in argv if not a.startswith("--config.")
          and not any(a.startswith(f"--{st}.") for st in STAGES)]
  p = argparse.ArgumentParser(
      prog="python -m mae_jax.protocol", description=__doc__, formatter_class=_HelpFormatter,
      epilog="overrides: --config.FIELD=VALUE (every stage) and --STAGE.FIELD=VALUE (one "
      f"stage: {', '.join(s for s in STAGES if s != 'observables')}), e.g. --config.batch_size=32 "
      "--pretrain.lr=1e-3; the fields and their values: python -m mae_jax.main --config "
      f"pretrain --print_config.\n{recipe.help_text()}.")
  p.add_argument("--data", required=True, help="converted, labelled dataset directory")
  p.add_argument("--pretrain-data", default="",
                 help="converted dataset to pretrain on (labels ignored); default --data")
  p.add_argument("--root", required=True, help="directory for all stages' workdirs and the report")
  p.add_argument("--variant", default="tiny", help="ViT size: tiny, small-e2e, e2e-base, S, B, L")
  p.add_argument("--model", default="mae",
                 help="MAE family: mae, depthwise_mae, convstem_mae, convmae, channel_mae")
  p.add_argument("--tokens", default=recipe.TOKENS, choices=("dense", "sparse"),
                 help="sparse: only occupied patches are tokens (ViT MAE, models/sparse.py)")
  p.add_argument("--patch", type=int, default=5, help="patch size in pixels")
  p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
  p.add_argument("--steps", default=recipe.STEPS,
                 help="training steps per stage (the controls take those of their stage)")
  p.add_argument("--stages", default=",".join(DEFAULT_STAGES), help=f"any of {STAGES}")
  p.add_argument("--labelled", default="",
                 help="comma-separated labelled-set sizes for the downstream stages; 'all' = "
                      "every labelled jet (e.g. 100,1000,all: the full-label ceiling too)")
  p.add_argument("--trees-grid", default="",
                 help="grid of the tree stages, chosen on validation, e.g. "
                      "'learning_rate=0.05,0.1;max_iter=100,300;max_leaf_nodes=15,31;min_samples_leaf=5,20' "
                      "(the default; a field not named keeps its default values)")
  p.add_argument("--compression-jets", type=int, default=0, metavar="N",
                 help="compression stage: decode and score only the first N test jets (0 = "
                      "all; the observables of each decoded set cost 20-45 jets/s on one core)")
  p.add_argument("--select", action="append", default=[], metavar="STAGE.FIELD=V1,V2",
                 help="run STAGE once per value, keep the best on the validation split")
  p.add_argument("--recon-splits", default=None,
                 help="comma-separated splits of --data whose reconstruction error is measured "
                      "after pretraining (default: train and test, those the dataset has); a "
                      "full pass over each, so on a real train split of millions of jets "
                      "'test' alone saves hours")
  args = p.parse_args(rest)
  overrides, per_stage = recipe.apply(overrides, per_stage)
  args.argv = argv
  args.pretrain_data = args.pretrain_data or args.data
  try:
    args.steps_by_stage = dict(kv.split("=") for kv in args.steps.split(",") if kv)
    items = {n.strip() for n in args.labelled.split(",") if n.strip()}
    # 'all' = every labelled jet of the train split (the full-label ceiling), largest last
    args.sizes = sorted(int(n) for n in items - {"all"}) + ([None] if "all" in items else [])
    args.sizes = args.sizes or [None]
  except ValueError:
    raise UsageError(f"--steps {args.steps!r} / --labelled {args.labelled!r}: expected "
                     "stage=N,... and N,M,... (or all)") from None
  from mae_jax.evaluate import trees
  try:
    args.trees_grid = trees.parse_grid(args.trees_grid)
  except ValueError as e:
    raise UsageError(f"--trees-grid: {e}") from None
  if args.compression_jets < 0:
    raise UsageError(f"--compression-jets {args.compression_jets}: give N >= 0 (0 = all)")
  args.stage_list = [s for s in args.stages.split(",") if s]
  unknown = set(args.stage_list) - set(STAGES)
  if unknown:
    raise UsageError(f"unknown stages {sorted(unknown)}; known: {STAGES}")
  return args, overrides, per_stage


def check_data(args):
  """Every dataset exists and fits, and every requested split and size is there, before
  anything trains (one line each)."""
  from mae_jax.data import meta as meta_lib
  meta = meta_lib.load_meta(args.data)  # a missing dataset: MissingPathError, one line
  pre_meta = meta_lib.load_meta(args.pretrain_data)
  if tuple(pre_meta["image_shape"]) != tuple(meta["image_shape"]):
    raise UsageError(f"--pretrain-data {args.pretrain_data} holds {pre_meta['image_shape']} "
                     f"images but --data {args.data} holds {meta['image_shape']}")
  counts = meta["splits"].get("train", {}).get("label_counts", {})
  for n in [s for s in args.sizes if s]:
    need = {"0": n // 2, "1": n - n // 2}
    if "train" not in meta["splits"] or any(int(counts.get(k, 0)) < v for k, v in need.items()):
      raise UsageError(f"--labelled {n}: a class-balanced set of {n} needs {need} examples per "
                       f"class in the train split of {args.data}; it has {counts}")
  return meta, pre_meta


def check_recon_splits(value, data_dir):
  """'test,validation' -> those splits, each checked against the dataset (an error names the
  missing one); None -> train and test, whichever the dataset has."""
  from mae_jax.data import meta as meta_lib
  available = meta_lib.load_meta(data_dir)["splits"]
  if value is None:
    splits = [s for s in ("train", "test") if s in available]
    if not splits:
      raise UsageError(f"{data_dir} has neither a train nor a test split (its splits: "
                       f"{sorted(available)}); pick one with --recon-splits")
    return splits
  splits = [s for s in value.split(",") if s]
  if not splits:
    raise UsageError("--recon-splits: give at least one split, e.g. test")
  unknown = [s for s in splits if s not in available]
  if unknown:
    raise UsageError(f"--recon-splits {value!r}: {unknown} not in the dataset {data_dir} "
                     f"(its splits: {sorted(available)})")
  return splits


def check_classes(meta, data_dir, stage_list):
  """The validation and test splits of the labelled data hold both classes (before anything
  trains: a file sorted by class and cut at its tail fails here, in seconds)."""
  if not any(stages.BY_NAME[s].kind == "classify" for s in stage_list):
    return
  for split in ("validation", "test"):
    counts = meta["splits"].get(split, {}).get("label_counts")
    if counts is None:
      continue
    have = {k: int(v) for k, v in counts.items() if int(v) > 0 and k in ("0", "1")}
    if len(have) < 2:
      raise UsageError(f"{data_dir}: the {split} split holds one class only (label counts "
                       f"{counts}); AUC needs both. Reconvert with a split that mixes the "
                       "classes (e.g. shuffle or stratify the file before holding out).")


def missing_stages(per_seed, stage_list, sizes):
  """'seed S n=N: stage' for every requested stage without results (empty if complete)."""
  out = []
  for res in per_seed:
    for st in stage_list:
      if stages.BY_NAME[st].kind == "pretrain":
        if "pretrain" not in res:
          out.append(f"seed {res['seed']}: pretrain")
        continue
      for size in sizes:
        if st not in res["by_labelled"][stages.size_key(size)]:
          out.append(f"seed {res['seed']}" + (f" n={size}" if size else "") + f": {st}")
  return out


def pretrain_measures(res, args, seed, first, config, workdir, recon_splits, timings):
  """Parameter count, mask ratio and the reconstruction of the pretrained MAE into `res`."""
  t0 = time.time()
  res["params"] = measure.count_params(workdir)
  res["mask_ratio"] = config.model.mask_ratio
  res["normalization"] = config.data.normalization
  res["target"] = config.task.get("target", "pixels")  # the pretraining objective
  if res["target"] == "codes":
    res["codebook_size"] = int(config.task.codebook_size)
  recon_path = os.path.join(workdir, "reconstruction.json")
  r = {}
  if os.path.exists(recon_path):  # a reused run: measure only the splits it lacks
    with open(recon_path) as f:
      r = json.load(f)
  missing = [s for s in recon_splits if s not in r]
  if missing:
    print(f"[protocol] seed {seed}: reconstruction on {args.data} {','.join(missing)}",
          flush=True)
    new, _ = measure.reconstruction(workdir, config, missing, args.data)
    new["seconds"] = time.time() - t0 + float(r.get("seconds", 0.0))
    r.update(new)
    from mae_jax import checkpoint
    checkpoint.write_json(recon_path, r)
    with open(recon_path) as f:  # read back: the report takes JSON's types (lists, floats)
      r = json.load(f)
  res["feature_width"] = r.pop("feature_width")
  if first:
    timings["reconstruction"] = float(r.pop("seconds", 0.0))
  r.pop("seconds", None)
  split = "test" if "test" in r else next(iter(r))
  res["recon_channels"] = {"split": split, **{k: v for k, v in r[split].items()
                                              if isinstance(v, list)}}
  res["recon"] = {sp: {k: v for k, v in d.items() if not isinstance(v, list)}
                  for sp, d in r.items()}


def main(argv=None):
  """Runs the requested stages of every seed (and labelled-set size), then the report.
  A stage stopped by a signal raises `stages.StageStopped` (no later stage, no report)."""
  import sys
  argv = list(sys.argv[1:] if argv is None else argv)
  args, overrides, per_stage = parse_args(argv)
  meta, pre_meta = check_data(args)
  check_classes(meta, args.data, args.stage_list)
  recon_splits = check_recon_splits(args.recon_splits, args.data)
  selects = parse_selects(args.select, args.stage_list)
  check_selects(selects, lambda st: load_stage_config(st, args.variant, args.model, args.patch,
                                                      args.tokens))
  if any(s in stages.REGRESS_STAGES for s in args.stage_list):
    missing = set(stages.REGRESS_TARGETS.split(",")) - set(meta.get("target_names", []))
    if missing:
      raise UsageError(f"regress stages need targets {sorted(missing)}; {args.data} has "
                       f"{meta.get('target_names', [])}")
  seeds = [int(s) for s in args.seeds.split(",")]
  stages.check_stage_configs(args.stage_list, lambda st: stages.stage_config(
      st, args, seeds[0], args.sizes[0], overrides, per_stage, args.steps_by_stage))
  downstream = [s for s in args.stage_list if stages.BY_NAME[s].kind != "pretrain"]
  clock = stages.Clock(len(seeds) * (("pretrain" in args.stage_list)
                                     + len(downstream) * len(args.sizes)))
  cache = os.path.join(args.root, "cache")
  per_seed, timings = [], {}
  for seed in seeds:
    res = {"seed": seed, "by_labelled": {stages.size_key(size): {} for size in args.sizes},
           "workdirs": {}}
    jobs = ([("pretrain", None)] if "pretrain" in args.stage_list else []) + [
        (st, size) for size in args.sizes for st in downstream]
    for stage, size in jobs:
      record = stages.BY_NAME[stage]
      workdir = stages.run_dir(args.root, seed, size, stage)
      label = f"seed {seed}" + (f" n={size}" if size else "") + f": {stage}"
      config_for = (lambda st, size=size, seed=seed: stages.stage_config(
          st, args, seed, size, overrides, per_stage, args.steps_by_stage))
      config = config_for(stage) if record.config else None
      try:
        if record.run:
          clock.start(label, workdir)
          from mae_jax.protocol import controls  # the stages that are functions
          final, now = getattr(controls, record.run)(stages.Job(record, seed, size, workdir,
                                                                args, cache, config_for))
          if not now:
            print(f"[protocol] {label}: reusing the finished run in {workdir}", flush=True)
        elif stage in selects:
          clock.start(label)
          final, now, workdir = stages.run_selected(config, workdir, *selects[stage], label)
        else:
          clock.start(label, workdir)
          final, now = stages.run_stage(config, workdir, label)
      except KeyboardInterrupt:  # Ctrl-C outside the trainer's own handling: the same stop
        from mae_jax import checkpoint
        raise stages.stopped({"preempted_at": checkpoint.last_good_step(workdir) or 0},
                             label, workdir, argv) from None
      stop = stages.stopped(final, label, workdir, argv)
      if stop is not None:
        raise stop
      clock.finished(now)
      key = stage if record.kind == "pretrain" else f"{stage}@{stages.size_key(size)}"
      res["workdirs"][key] = workdir
      if record.kind == "pretrain":
        res["pretrain"] = final
      else:
        res["by_labelled"][stages.size_key(size)][stage] = final
      if seed == seeds[0] and (size == args.sizes[-1] or record.kind == "pretrain"):
        timings[stage] = float(final.get("train_seconds") or 0.0)
      if record.kind == "pretrain":
        pretrain_measures(res, args, seed, seed == seeds[0], config, workdir, recon_splits,
                          timings)
      if record.config == "probe" and record.kind == "classify":
        res["pool"] = config.model.pool
    per_seed.append(res)
  meta = dict(meta)
  meta["stored_bytes_per_jet"] = measure.stored_bytes_per_jet(args.data)
  missing = missing_stages(per_seed, args.stage_list, args.sizes)
  path = report.write_report(args.root, args, per_seed, meta, pre_meta, timings, args.sizes,
                             missing=missing)
  for line in report.summary_lines(per_seed, args.sizes):
    print(f"[protocol] {line}", flush=True)
  print(f"[protocol] report: {path}", flush=True)
  return per_seed


def cli():
  """Entry point (`mae-jax-protocol`): quiet absl logging for this process only."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # progress lines are printed; TFDS chatter is not
  import sys
  from mae_jax import errors
  try:
    status = errors.run_cli(main)
  except stages.StageStopped as e:  # a signal stopped a stage: one line, the resume command
    print(f"[protocol] {e}", file=sys.stderr, flush=True)
    status = 3
  sys.exit(status)


__all__ = ["main", "cli", "fmt", "STAGES", "DEFAULT_STAGES", "CLASSIFY_STAGES", "CONTROL_OF",
           "parse_selects", "check_selects", "format_selected", "load_stage_config",
           "validation_score", "check_recon_splits"]
