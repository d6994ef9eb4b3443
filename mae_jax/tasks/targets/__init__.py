"""What an MAE prediction is compared with, one module per kind, chosen by
`config.task.target` (as big_vision names its evaluators' modules in the config).

  pixels   the patch pixels (per-patch normalised with `model.norm_pix_loss`); MSE.

A target module defines `Targets(config)` with `__call__(images, slot_ids=None)` ->
targets at the prediction's slots, `errors(pred, targets)` -> per-slot error [B, S] and
`baseline(targets)` -> the per-slot error of a trivial predictor (reported next to the
model's). A new objective (e.g. discrete code targets) is one new module here and
`--config.task.target=NAME`; the models and the loop stay as they are.
"""

from __future__ import annotations

import importlib
import pkgutil


def names() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__))


def build(config):
  """The target builder of `config.task.target` (default "pixels")."""
  name = config.task.get("target", "pixels")
  if name not in names():
    raise ValueError(f"task.target={name!r}; choose one of {names()} "
                     "(modules in mae_jax/tasks/targets/)")
  return importlib.import_module(f"{__name__}.{name}").Targets.from_config(config)
