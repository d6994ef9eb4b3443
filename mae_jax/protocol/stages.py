"""The protocol's stages: ONE table of records (`TABLE`), and how a stage is assembled and run.

A stage record says everything the protocol and its report need: its name, the trainer
config it is (or the function that runs it, for stages that are not trainer runs), what it
loads, which stage it controls for, and how it is measured and reported (`kind`: the report
section; `control`: a control the verdict weighs the pretrained stages against; `versus`:
what the verdict compares it with). Adding a stage = one record (+ its function).

A control takes the steps and the overrides of the stage it controls for (`scratch` those
of `finetune`, `probe_random` those of `probe`), then its own, which win; `model_init`,
`model_load` and `optim.layer_decay`, which make it a control, are never inherited.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

from mae_jax import config_util
from mae_jax.errors import UsageError

MAE_ARG = "variant={variant},patch={patch},model={model},tokens={tokens}"
REGRESS_TARGETS = "jet_mass,jet_pt"
REGRESS_TASK = (("task.name", "regress"), ("task.targets", REGRESS_TARGETS))
STRONGEST = "strongest control"  # in `versus`: the control with the highest test AUC that ran


@dataclasses.dataclass(frozen=True)
class Stage:
  """One protocol stage (see the module doc)."""
  name: str
  kind: str                 # report section: "pretrain" | "classify" | "regress" | "compression"
  describe: str             # its line in the report
  config: str = ""          # configs/<config>.py of the trainer ("" = `run` is a function)
  config_arg: str = MAE_ARG
  task: tuple = ()          # (field, value) set on the config: the task it trains
  loads: str = ""           # "pretrain": starts from / reads the seed's pretrain checkpoint
  controls: str = ""        # the stage whose steps and overrides it takes
  control: bool = False     # a control of the verdict ("the strongest control")
  versus: tuple = ()        # stages (or STRONGEST) the verdict compares it with
  run: str = ""              # name of its function in protocol/controls.py, fn(Job) ->
                            # (final metrics, trained now); "" = the trainer
  default: bool = False     # in the default --stages
  trains: str = ""          # a `run` stage that trains a model of its own: the configs/<trains>.py
                            # it starts from (its config_for(name), --STAGE.* overrides apply)


@dataclasses.dataclass
class Job:
  """One stage of one seed and labelled-set size, as a `Stage.run` function gets it."""
  stage: Stage
  seed: int
  size: int | None
  workdir: str
  args: object
  cache: str
  config_for: Callable      # stage name -> its assembled config for this seed and size


TABLE = (
    Stage("pretrain", "pretrain", "masked-autoencoder pretraining (labels ignored)",
          config="pretrain", default=True),
    Stage("probe", "classify", "linear head on the frozen pretrained encoder",
          config="probe", loads="pretrain", versus=("probe_random", STRONGEST), default=True),
    Stage("probe_random", "classify", "the same probe on the same encoder *randomly "
          "initialised* (what the probe gets without pretraining)",
          config="probe", controls="probe", default=True),
    Stage("finetune", "classify", "everything trains from the pretrained encoder",
          config="finetune", loads="pretrain", versus=("scratch", STRONGEST), default=True),
    Stage("scratch", "classify", "the finetune model and budget from random initialisation",
          config="scratch", controls="finetune", control=True, default=True),
    Stage("resnet", "classify", "ResNet-15 of the E2E papers", config="resnet",
          config_arg="arch=resnet15", control=True, default=True),
    Stage("observables", "classify", "logistic regression on image-derived jet observables "
          "(mass, girth, p_T^D, multiplicities, channel sums, impact parameters)",
          run="observables_lr", control=True, default=True),
    Stage("observables_gbt", "classify", "gradient-boosted trees on the same observables, "
          "hyper-parameters chosen on the validation split",
          run="observables_gbt", control=True, default=True),
    Stage("observables_encoder", "classify", "the same trees on the observables and the "
          "frozen pretrained encoder's pooled features (does the encoder add information?)",
          run="observables_encoder", loads="pretrain", versus=("observables_gbt",),
          default=True),
    Stage("regress_probe", "regress", "linear head on the frozen pretrained encoder",
          config="probe", task=REGRESS_TASK, loads="pretrain"),
    Stage("regress_finetune", "regress", "the pretrained encoder finetuned",
          config="finetune", task=REGRESS_TASK, loads="pretrain"),
    Stage("regress_scratch", "regress", "the regress_finetune model and budget from random "
          "initialisation", config="scratch", task=REGRESS_TASK, controls="regress_finetune",
          control=True),
    Stage("regress_observables", "regress", "the physicist's estimate: the image's "
          "calorimeter mass and E_T sum, linearly calibrated on the train split",
          run="calo_regression", control=True),
    # the pretrain recipe with a bottleneck of 16 latents × 8 float16 = 256 bytes per jet by
    # default (`task` sets the fields; --compression.model.latents=K changes them)
    Stage("compression", "compression", "the compressive MAE (models/compressive.py) trained "
          "on the pretraining data; the test jets decoded from its float16 latents, scored "
          "in jet mass and pT beside zero-suppressed storage", trains="pretrain",
          task=(("model.latents", 16), ("model.latent_dim", 8)), run="compression"),
)
BY_NAME = {s.name: s for s in TABLE}
# how a kind of stage is drawn in the loss figure: y-label of its training loss, the
# validation metric drawn beside it, and a reference line ("ln2": no information)
CURVES = {"pretrain": {"ylabel": "masked-patch MSE (normalised units)",
                       "validation": "validation/masked_mse",
                       "reference": "validation/masked_mse_predict_zeros"},
          "classify": {"ylabel": "binary cross-entropy", "validation": None,
                       "reference": "ln2"},
          "regress": {"ylabel": "loss on standardised targets", "validation": None,
                      "reference": None},
          "compression": {"ylabel": "MSE on all occupied patches (normalised units)",
                          "validation": "validation/masked_mse", "reference": None}}
# a pretraining on code targets (task.target=codes) is drawn in its own units
CODES_CURVE = {"ylabel": "masked-token code cross-entropy",
               "validation": "validation/masked_ce",
               "reference": "validation/masked_ce_predict_frequencies",
               "reference_label": "predict code frequencies"}
# views of the table (names, in table order)
STAGES = tuple(BY_NAME)
DEFAULT_STAGES = tuple(s.name for s in TABLE if s.default)
CLASSIFY_STAGES = tuple(s.name for s in TABLE if s.kind == "classify")
REGRESS_STAGES = tuple(s.name for s in TABLE if s.kind == "regress")
TRAINED = tuple(s.name for s in TABLE if s.config)
CONTROL_OF = {s.name: s.controls for s in TABLE if s.controls}  # same budget, random init
# what makes a control a control: never inherited from the stage it controls for
CONTROL_OWN_FIELDS = ("model_init", "model_load", "optim.layer_decay")


def load_stage_config(stage, variant, model, patch, tokens="dense"):
  """The stage's config file with the run's model arguments."""
  record = BY_NAME[stage]
  if not (record.config or record.trains):
    raise UsageError(f"stage {stage!r} is not a trainer run; it has no config")
  module = config_util.config_module(record.config or record.trains)
  config = module.get_config(record.config_arg.format(variant=variant, patch=patch, model=model,
                                                      tokens=tokens))
  for field, value in record.task:  # e.g. task.name=regress
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
      node = getattr(node, p)
    setattr(node, leaf, value)
  return config


def stage_config(stage, args, seed, labelled, overrides, per_stage, steps):
  """The assembled config of one stage for one seed and labelled-set size (None = all)."""
  config = load_stage_config(stage, args.variant, args.model, args.patch, args.tokens)
  config.data.dir = args.pretrain_data if stage == "pretrain" else args.data
  config.seed = seed
  record = BY_NAME[stage]
  n_steps = steps.get(stage, steps.get(record.controls))
  if n_steps is not None:
    config.total_steps = int(n_steps)
    config.warmup_steps = min(config.warmup_steps, max(config.total_steps // 10, 1))
    config.eval_every = max(config.total_steps // 4, 1) if stage != "pretrain" else 0
  if record.loads == "pretrain" and record.config:
    config.model_init = run_dir(args.root, seed, None, "pretrain")
  if stage != "pretrain" and labelled:
    config.data.train_examples = int(labelled)
  # a control is the stage it controls for in every respect but the initialisation
  like = [a for a in per_stage.get(record.controls, [])
          if a[len("--config."):].split("=", 1)[0] not in CONTROL_OWN_FIELDS]
  try:
    return config_util.apply_overrides(config, overrides + like + per_stage.get(stage, []))
  except UsageError as e:
    raise UsageError(f"{stage}: {e}") from None


def check_fields(config):
  """The config's data fields that name one of a few modes (else the typo would surface only
  when the stage builds its pipeline, after the stages before it trained)."""
  from mae_jax.data import augment, meta
  augment.check_reflect(config.data.get("reflect", "none"))
  meta.check_normalization(config.data.get("normalization", "log1p"))
  return config


def check_stage_configs(stage_list, config_for):
  """Every trainer stage's config assembles (unknown fields, bad types) and passes
  `check_fields`, before anything trains; an error names the stage."""
  for stage in stage_list:
    if BY_NAME[stage].config or BY_NAME[stage].trains:
      try:
        check_fields(config_for(stage))
      except UsageError as e:
        raise UsageError(e if str(e).startswith(f"{stage}:") else f"{stage}: {e}") from None


def size_key(labelled) -> str:
  """Key of a labelled-set size in results: 'all' (the whole train split) or 'N'."""
  return str(int(labelled)) if labelled and labelled != "all" else "all"


def run_dir(root, seed, labelled, stage):
  """ROOT/seed{S}/{stage}, or ROOT/seed{S}/n{N}/{stage} for a labelled-set size N."""
  parts = [root, f"seed{seed}"] + ([f"n{labelled}"] if labelled and stage != "pretrain" else [])
  return os.path.join(*parts, stage)


def run_stage(config, workdir, label=""):
  """Trains the stage unless its workdir holds final_metrics.json; (metrics, trained now).
  Says whether it reuses a finished run or resumes a stopped one (from which step). The
  metrics of a run stopped by a signal are {"preempted_at": step, ...} (see `stopped`)."""
  from mae_jax import checkpoint, trainer
  done = os.path.join(workdir, "final_metrics.json")
  if os.path.exists(done):
    if config is not None:  # a finished run of other settings is never passed off as this one
      trainer.check_workdir(workdir, config)
      saved = checkpoint.read_json(os.path.join(workdir, "config.json")) or {}
      if saved.get("total_steps", config.total_steps) != config.total_steps:
        raise UsageError(
            f"{workdir} holds a finished {label} of {saved['total_steps']} steps, not "
            f"{config.total_steps}; use another --root, or delete that directory")
    print(f"[protocol] {label}: reusing the finished run in {workdir}", flush=True)
    with open(done) as f:
      return json.load(f), False
  step = checkpoint.last_good_step(workdir)
  if step:
    print(f"[protocol] {label}: resuming from step {step} of {config.total_steps} in {workdir}",
          flush=True)
  return trainer.train_and_evaluate(config, workdir), True


class StageStopped(RuntimeError):
  """A signal (SIGTERM, Ctrl-C) stopped a stage: the protocol stops, writes no report."""


def stopped(final, label, workdir, argv):
  """The StageStopped error (one line: stage, step, the command that resumes) if the trainer
  returned a stopped run's metrics, else None."""
  if not isinstance(final, dict) or "preempted_at" not in final:
    return None
  import shlex
  return StageStopped(
      f"{label} stopped at step {final['preempted_at']} (checkpoint in {workdir}); later "
      "stages did not run and no report was written; resume with: python -m mae_jax.protocol "
      + shlex.join(argv))


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
        check_fields(config_util.apply_overrides(config_for(stage),
                                                 [f"--config.{field}={value}"]))
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
        finals[value], now = run_stage(cfg, wd, f"{label} {field}={value}")
        trained |= now
        if "preempted_at" in finals[value]:  # stopped by a signal: the caller stops
          return finals[value], trained, wd
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
