"""What an MAE prediction is compared with, one module per kind, chosen by
`config.task.target` (as big_vision names its evaluators' modules in the config).

  pixels   the patch pixels (per-patch normalised with `model.norm_pix_loss`); MSE.
  codes    the patch's code in a k-means codebook fitted on the training data (empty
           patches: a reserved code); cross-entropy of the decoder's code logits (MPM-style
           discrete targets, `task.codebook_size`, `task.codebook_jets`).

A target module defines `Targets` with `from_config(config)` (or, for targets fitted on the
data, `from_data(config, pipe, workdir)`), `__call__(images, slot_ids=None)` -> targets at
the prediction's slots, `errors(pred, targets)` -> per-slot error [B, S] and
`baseline(targets)` -> the per-slot error of a trivial predictor (reported next to the
model's). Optional: `eval_terms(pred, targets)` -> {name: per-slot values [B, S]} whose
masked means evaluation reports as `{split}/masked_{name}` (default: "mse" = errors and
"mse_predict_zeros" = baseline), `selection` (the term that picks the checkpoint, smaller
is better; default "mse"), `decode(pred)` -> pixels [B, S, p*p*C] for reconstruction
figures and numbers (default: pred is pixels), and a module-level `pred_dim(config)` ->
the decoder's output width (default 0 = p*p*C). A new objective is one new module here
and `--config.task.target=NAME`; the models and the loop stay as they are.
"""

from __future__ import annotations

import importlib
import pkgutil


def names() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__))


def module(config):
  """The target module of `config.task.target` (default "pixels")."""
  name = (config.get("task") or {}).get("target", "pixels")
  if name not in names():
    raise ValueError(f"task.target={name!r}; choose one of {names()} "
                     "(modules in mae_jax/tasks/targets/)")
  return importlib.import_module(f"{__name__}.{name}")


def build(config, pipe=None, workdir=None):
  """The targets of `config.task.target`; `pipe` (the data) and `workdir` (the run's, to
  save or reuse what was fitted) for targets fitted on the data."""
  cls = module(config).Targets
  if hasattr(cls, "from_data"):
    return cls.from_data(config, pipe, workdir)
  return cls.from_config(config)


def pred_dim(config) -> int:
  """The decoder's output width the target needs (0 = p*p*C, the pixels)."""
  fn = getattr(module(config), "pred_dim", None)
  return int(fn(config)) if fn is not None else 0
