"""MAE pretraining: the model returns `(pred, aux)` (models/mae.py); this task owns the
objective: targets (`config.task.target`, tasks/targets/), the masked-slot loss and the
eval sums, all from the one `masked_mean` of the target's per-slot errors.

The prediction's slots are the patch grid unless aux has "slot_ids" (sparse tokens: each
slot's patch index); the loss counts the slots of aux "slot_mask" (default aux "mask",
1 = masked). Evaluation uses the grid views aux "pred" / "mask", weighted by real examples.
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


class MaeTask(base.Task):
  name = "mae"

  def __init__(self, config):
    super().__init__(config)
    self.targets = targets_lib.build(config)

  def loss(self, out, batch):
    return objective(self.targets, out, batch["image"])

  def eval_outputs(self, out, batch):
    _, aux = out
    target = self.targets(batch["image"])
    weight = aux["mask"] * batch["valid"][:, None]
    return {"sq_err": jnp.sum(self.targets.errors(aux["pred"], target) * weight),
            "zero_sq_err": jnp.sum(self.targets.baseline(target) * weight),
            "count": jnp.sum(weight), "examples": jnp.sum(batch["valid"])}

  def summarize(self, outputs, split):
    sums = {k: float(np.sum([np.asarray(o[k], np.float64) for o in outputs])) for k in outputs[0]}
    count = max(sums["count"], 1.0)
    return {f"{split}/masked_mse": sums["sq_err"] / count,
            f"{split}/masked_mse_predict_zeros": sums["zero_sq_err"] / count,
            f"{split}/examples": sums["examples"]}

  def selection_metric(self, summary, split):
    return -summary[f"{split}/masked_mse"]

  def artefacts(self, workdir, run):
    """reconstruction.png: masked inputs and reconstructions per channel (config.figures)."""
    if not run.config.figures:
      return
    from mae_jax.evaluate import plots  # matplotlib kept off module load
    plots.reconstructions(run.model, run.params, run.pipe, run.split, run.mesh, run.config,
                          os.path.join(workdir, "reconstruction.png"))
