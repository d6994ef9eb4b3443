"""The protocol's stages: which config each one is, how it is assembled, how it runs.

Every stage but `observables` is a config of the one trainer (configs/*.py). The two
controls take the steps and the overrides of the stage they control for (`scratch` those
of `finetune`, `probe_random` those of `probe`), then their own, which win;
`model_init`, `model_load` and `optim.layer_decay`, which make them controls, are never
inherited. `regress_probe` / `regress_finetune` are the probe and finetune with the
regression task (jet mass and pT).
"""

from __future__ import annotations

import json
import os
import time

from mae_jax import config_util
from mae_jax.errors import UsageError

STAGES = ("pretrain", "probe", "probe_random", "finetune", "scratch", "resnet", "observables",
          "regress_probe", "regress_finetune")
DEFAULT_STAGES = ("pretrain", "probe", "probe_random", "finetune", "scratch", "resnet",
                  "observables")
CLASSIFY_STAGES = ("probe", "probe_random", "finetune", "scratch", "resnet", "observables")
REGRESS_STAGES = ("regress_probe", "regress_finetune")
TRAINED = tuple(s for s in STAGES if s != "observables")
CONTROL_OF = {"scratch": "finetune", "probe_random": "probe"}  # same budget, random init
# what makes a control a control: never inherited from the stage it controls for
CONTROL_OWN_FIELDS = ("model_init", "model_load", "optim.layer_decay")
CONFIG_FILE = {"pretrain": "pretrain", "probe": "probe", "finetune": "finetune",
               "scratch": "scratch", "resnet": "resnet", "probe_random": "probe",
               "regress_probe": "probe", "regress_finetune": "finetune"}
USES_PRETRAINED = ("probe", "finetune", "regress_probe", "regress_finetune")
ENCODER_STAGES = ("pretrain", "probe", "probe_random", "finetune", "scratch") + REGRESS_STAGES
REGRESS_TARGETS = "jet_mass,jet_pt"


def load_stage_config(stage, variant, model, patch, tokens="dense"):
  """The stage's config file with the run's model arguments."""
  module = config_util.config_module(CONFIG_FILE[stage])
  if stage == "resnet":
    return module.get_config("arch=resnet15")
  config = module.get_config(f"variant={variant},patch={patch},model={model},tokens={tokens}")
  if stage in REGRESS_STAGES:
    config.task.name = "regress"
    config.task.targets = REGRESS_TARGETS
  return config


def stage_config(stage, args, seed, labelled, overrides, per_stage, steps):
  """The assembled config of one stage for one seed and labelled-set size (None = all)."""
  config = load_stage_config(stage, args.variant, args.model, args.patch, args.tokens)
  config.data.dir = args.pretrain_data if stage == "pretrain" else args.data
  config.seed = seed
  n_steps = steps.get(stage, steps.get(CONTROL_OF.get(stage)))
  if n_steps is not None:
    config.total_steps = int(n_steps)
    config.warmup_steps = min(config.warmup_steps, max(config.total_steps // 10, 1))
    config.eval_every = max(config.total_steps // 4, 1) if stage != "pretrain" else 0
  if stage in USES_PRETRAINED:
    config.model_init = run_dir(args.root, seed, None, "pretrain")
  if stage != "pretrain" and labelled:
    config.data.train_examples = int(labelled)
  # a control is the stage it controls for in every respect but the initialisation
  like = [a for a in per_stage.get(CONTROL_OF.get(stage), [])
          if a[len("--config."):].split("=", 1)[0] not in CONTROL_OWN_FIELDS]
  try:
    return config_util.apply_overrides(config, overrides + like + per_stage.get(stage, []))
  except UsageError as e:
    raise UsageError(f"{stage}: {e}") from None


def size_key(labelled) -> str:
  """Key of a labelled-set size in results: 'all' (the whole train split) or 'N'."""
  return str(int(labelled)) if labelled else "all"


def run_dir(root, seed, labelled, stage):
  """ROOT/seed{S}/{stage}, or ROOT/seed{S}/n{N}/{stage} for a labelled-set size N."""
  parts = [root, f"seed{seed}"] + ([f"n{labelled}"] if labelled and stage != "pretrain" else [])
  return os.path.join(*parts, stage)


def run_stage(config, workdir):
  """Trains the stage unless its workdir holds final_metrics.json; (metrics, trained now)."""
  from mae_jax import trainer
  done = os.path.join(workdir, "final_metrics.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f), False
  return trainer.train_and_evaluate(config, workdir), True


def parse_selects(items, stages):
  """['finetune.lr=1e-3,4e-3'] -> {'finetune': ('lr', ['1e-3', '4e-3'])}, syntax checked
  (`check_selects` checks the fields against the stage configs)."""
  out = {}
  for item in items:
    key, sep, values = item.partition("=")
    stage, _, field = key.partition(".")
    vals = [v for v in values.split(",") if v]
    if not sep or not field or not vals:
      raise UsageError(f"--select {item!r}: expected STAGE.FIELD=V1,V2,... "
                       "(e.g. finetune.lr=1e-3,4e-3)")
    selectable = [s for s in stages if s in TRAINED and s != "pretrain"]
    if stage not in selectable:
      raise UsageError(f"--select {item!r}: stage {stage!r} is not one of the stages run "
                       f"here that can be selected on validation: {selectable}")
    if stage in out:
      raise UsageError(f"--select: stage {stage!r} given twice; one field per stage")
    out[stage] = (field, vals)
  return out


def check_selects(selects, config_for):
  """Every value of every --select applies to its stage's config (before anything trains)."""
  for stage, (field, values) in selects.items():
    for value in values:
      try:
        config_util.apply_overrides(config_for(stage), [f"--config.{field}={value}"])
      except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"--select {stage}.{field}={','.join(values)}: {e}") from None


def format_selected(selected) -> str:
  """[{'lr': '1e-3'}, {'lr': '4e-3'}] (one per seed) -> 'lr=1e-3, lr=4e-3'."""
  return ", ".join(" ".join(f"{k}={v}" for k, v in s.items()) for s in selected if s)


def validation_score(workdir):
  """The trainer's selection metric of the validation-selected checkpoint in `workdir`."""
  path = os.path.join(workdir, "best.json")
  if not os.path.exists(path):
    raise UsageError(f"--select needs validation scores, but {path} does not exist: the "
                     "stage had no validation split, or its validation score was never finite "
                     "(e.g. AUC on a one-class split)")
  with open(path) as f:
    best = json.load(f)
  if best.get("selection_metric") is None:
    raise UsageError(f"{path} has no finite 'selection_metric'; delete {workdir} to rerun it")
  return float(best["selection_metric"])


def run_selected(config, workdir, field, values, label):
  """Runs a stage once per value of `field`; returns the final metrics of the value with
  the best validation score, with "selected" {field: value} and the whole "grid"; whether
  anything trained now; the chosen value's workdir.

  A value whose run stops on a non-finite loss (nan_policy=stop) scores -inf and is
  recorded in WORKDIR/failed.json, so a rerun does not train it again."""
  from mae_jax import errors
  grid, finals, trained, dirs = {}, {}, False, {}
  for value in values:
    cfg = config_util.apply_overrides(config.copy_and_resolve_references(),
                                      [f"--config.{field}={value}"])
    wd = dirs[value] = f"{workdir}_{field.replace('.', '-')}{value}"
    failed = os.path.join(wd, "failed.json")
    print(f"[protocol] {label} {field}={value} -> {wd}", flush=True)
    if not os.path.exists(failed):
      try:
        finals[value], now = run_stage(cfg, wd)
        trained |= now
        grid[value] = validation_score(wd)
        continue
      except errors.NonFiniteError as e:
        with open(failed, "w") as f:
          json.dump({"error": str(e)}, f)
    with open(failed) as f:
      print(f"[protocol] {label} {field}={value} failed: {json.load(f)['error']}", flush=True)
    grid[value] = float("-inf")
  if not finals:
    raise UsageError(f"--select {field}: every value failed (see failed.json in "
                     f"{', '.join(dirs.values())})")
  chosen = max(finals, key=lambda v: grid[v])  # first value wins ties
  print(f"[protocol] {label} selected {field}={chosen} "
        f"(validation {', '.join(f'{v}: {grid[v]:.4f}' for v in values)})", flush=True)
  return {**finals[chosen], "selected": {field: chosen}, "grid": grid}, trained, dirs[chosen]


class Clock:
  """Stage k/N counter with elapsed time and an ETA from the stages trained so far."""

  def __init__(self, total: int):
    self.total, self.done, self.t0, self.trained, self.trained_s = total, 0, time.time(), 0, 0.0

  def start(self, label: str, workdir: str = ""):
    self.done += 1
    self._t = time.time()
    elapsed = (time.time() - self.t0) / 60
    eta = ""
    if self.trained:
      eta = f", ETA {(self.total - self.done + 1) * self.trained_s / self.trained / 60:.1f} min"
    where = f" -> {workdir}" if workdir else ""
    print(f"[protocol] {self.done}/{self.total} {label}{where} (elapsed {elapsed:.1f} min{eta})",
          flush=True)

  def finished(self, trained: bool):
    if trained:
      self.trained += 1
      self.trained_s += time.time() - self._t
