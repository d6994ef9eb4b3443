"""The protocol's defaults: the recipe that learns on a CPU budget (measured with the
quickstart, README "Quickstart"), in one place. Every value is a default: a
`--config.FIELD=V` or `--STAGE.FIELD=V` of the user's replaces it.

Sparse tokens; 1,500 pretraining steps, 300 for each downstream stage; batch 64; lrs
chosen on the validation split (`--select finetune.lr=2e-3,8e-3 --select
scratch.lr=2e-3,8e-3`: finetune 8e-3, scratch 2e-3); the MAE decoder's output layer
zero-initialised (chosen on validation among issue 26's levers). All chosen for the tiny
variant: small-e2e's finetune at lr 8e-3 fell below its own scratch at 100 labels and 2e-3 won
on validation (README, "Tiny against a larger encoder").
"""

from __future__ import annotations

TOKENS = "sparse"
STEPS = "pretrain=1500,probe=300,finetune=300,resnet=300"
# {stage (or "config" for every stage): {field: value}}
FIELDS = {
    "config": {"batch_size": 64},
    # the decoder's output layer starts at predict-zeros: on the validation split (issue 26's
    # lever sweep, benchmarks/levers.py, 500 steps) the frozen encoder's linear probe went
    # from AUC 0.896 to 0.943 with 100 labels and 0.937 to 0.955 with 1,000
    "pretrain": {"lr": 5e-3, "warmup_steps": 100, "model.pred_init": "zeros"},
    # the compressive MAE trains with the pretraining lr (its steps and warmup it takes from
    # the pretrain stage, protocol/controls.py); without it, the base config's 1.5e-4 (peak
    # 3.75e-5 at batch 64, 33x below pretraining's)
    "compression": {"lr": 5e-3},
    "probe": {"lr": 0.1},
    "finetune": {"lr": 8e-3},
    "scratch": {"lr": 2e-3},
    "resnet": {"lr": 4e-3, "batch_size": 32},
}


def _field(arg: str) -> str:
  return arg.split("=", 1)[0].split(".", 1)[1]  # '--pretrain.lr=5e-3' -> 'lr'


def apply(overrides: list[str], per_stage: dict[str, list[str]]):
  """The recipe's values placed before the user's overrides (which therefore win); a field
  the user set for every stage (`--config.F`) or for that stage (`--STAGE.F`) is left alone,
  so `--config.batch_size=8` also replaces the recipe's resnet batch size."""
  user_all = {_field(a) for a in overrides}
  overrides = [f"--config.{f}={v}" for f, v in FIELDS["config"].items()
               if f not in user_all] + list(overrides)
  per_stage = dict(per_stage)
  for stage, fields in FIELDS.items():
    if stage == "config" or stage not in per_stage:
      continue
    user = user_all | {_field(a) for a in per_stage[stage]}
    per_stage[stage] = [f"--config.{f}={v}" for f, v in fields.items()
                        if f not in user] + per_stage[stage]
  return overrides, per_stage


def help_text() -> str:
  """The recipe as `--help` shows it."""
  flags = " ".join(f"--{stage}.{f}={v}" for stage, fields in FIELDS.items()
                   for f, v in fields.items())
  return (f"defaults (the recipe, protocol/recipe.py): --tokens {TOKENS} --steps {STEPS} "
          f"{flags}; any --config.FIELD=V / --STAGE.FIELD=V replaces its value. The lrs "
          "were chosen for --variant tiny: choose them again for another size (--select "
          "finetune.lr=2e-3,8e-3; small-e2e's finetune lost its pretrained features at 8e-3)")
