"""MAE pretraining: the model returns `(pred, aux)` (models/mae.py); this task owns the
objective: targets (`config.task.target`, tasks/targets/), the masked-slot loss and the
eval sums, all from the one `masked_mean` of the target's per-slot errors.

The prediction's slots are the patch grid unless aux has "slot_ids" (sparse tokens: each
slot's patch index); the loss counts the slots of aux "slot_mask" (default aux "mask",
1 = masked). Evaluation uses the grid views aux "pred" / "mask", weighted by real examples,
and reports the masked mean of each of the target's `eval_terms` (pixels: masked_mse and
masked_mse_predict_zeros; codes: masked_ce, masked_ce_predict_frequencies and
masked_code_accuracy).
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from mae_jax.tasks import base
from mae_jax.tasks import targets as targets_lib
from mae_jax.tasks.targets import pixels


def masked_mean(errors, weight):
  """Mean of per-slot errors over the slots with weight 1 (0 when none is)."""
  weight = weight.astype(jnp.float32)
  return jnp.sum(errors * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def objective(targets, out, images):
  """The training loss of an MAE output `(pred, aux)` on `images`, for `targets`."""
  pred, aux = out
  target = targets(images, aux.get("slot_ids"))
  return masked_mean(targets.errors(pred, target), aux.get("slot_mask", aux["mask"]))


def masked_mse(pred, target, mask, norm_pix_loss: bool = False):
  """Mean per-pixel squared error over masked patches (mask 1 = masked); `target` raw
  patches [B, N, p*p*C] (normalised here with `norm_pix_loss`)."""
  target = target.astype(jnp.float32)
  if norm_pix_loss:
    target = pixels.normalize_patches(target)
  return masked_mean(pixels.squared_errors(pred, target), mask)


def eval_terms(targets, pred, target) -> dict:
  """{name: per-slot values [B, S]} evaluation reports as masked means (targets/__init__)."""
  if hasattr(targets, "eval_terms"):
    return targets.eval_terms(pred, target)
  return {"mse": targets.errors(pred, target), "mse_predict_zeros": targets.baseline(target)}


def decode(targets, pred):
  """The prediction in pixels [B, S, p*p*C] (code logits go through their codebook)."""
  return targets.decode(pred) if hasattr(targets, "decode") else pred


class MaeTask(base.Task):
  name = "mae"

  def __init__(self, config, targets=None):
    super().__init__(config)
    self.targets = targets if targets is not None else targets_lib.build(config)

  @classmethod
  def from_data(cls, config, pipe, workdir=None):
    return cls(config, targets_lib.build(config, pipe, workdir))

  def loss(self, out, batch):
    return objective(self.targets, out, batch["image"])

  def eval_outputs(self, out, batch):
    _, aux = out
    target = self.targets(batch["image"])
    weight = aux["mask"] * batch["valid"][:, None]
    terms = eval_terms(self.targets, aux["pred"], target)
    return {**{k: jnp.sum(v * weight) for k, v in terms.items()},
            "count": jnp.sum(weight), "examples": jnp.sum(batch["valid"])}

  def summarize(self, outputs, split):
    sums = {k: float(np.sum([np.asarray(o[k], np.float64) for o in outputs])) for k in outputs[0]}
    count = max(sums.pop("count"), 1.0)
    examples = sums.pop("examples")
    return {**{f"{split}/masked_{k}": v / count for k, v in sums.items()},
            f"{split}/examples": examples}

  def selection_metric(self, summary, split):
    return -summary[f"{split}/masked_{getattr(self.targets, 'selection', 'mse')}"]

  def artefacts(self, workdir, run):
    """reconstruction.png: masked inputs and reconstructions per channel (config.figures)."""
    if not run.config.figures:
      return
    from mae_jax.evaluate import plots  # matplotlib kept off module load
    plots.reconstructions(run.model, run.params, run.pipe, run.split, run.mesh, run.config,
                          os.path.join(workdir, "reconstruction.png"),
                          decode=getattr(self.targets, "decode", None))
