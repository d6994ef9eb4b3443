"""MAE pretraining: the model returns (loss, aux); eval sums squared errors over masked
patches next to those of predicting empty patches."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mae_jax.models import mae as mae_lib
from mae_jax.tasks import base


class MaeTask(base.Task):
  name = "mae"

  def loss(self, out, batch):
    return out[0]

  def eval_outputs(self, out, batch):
    _, aux = out
    target = aux["target"].astype(jnp.float32)
    if self.config.model.get("norm_pix_loss", False):
      target = mae_lib.normalize_patches(target)
    per_patch = jnp.mean((aux["pred"].astype(jnp.float32) - target) ** 2, axis=-1)
    zeros = jnp.mean(target**2, axis=-1)  # a model that predicts empty patches
    weight = aux["mask"] * batch["valid"][:, None]
    return {"sq_err": jnp.sum(per_patch * weight), "zero_sq_err": jnp.sum(zeros * weight),
            "count": jnp.sum(weight), "examples": jnp.sum(batch["valid"])}

  def summarize(self, outputs, split):
    sums = {k: float(np.sum([np.asarray(o[k], np.float64) for o in outputs])) for k in outputs[0]}
    count = max(sums["count"], 1.0)
    return {f"{split}/masked_mse": sums["sq_err"] / count,
            f"{split}/masked_mse_predict_zeros": sums["zero_sq_err"] / count,
            f"{split}/examples": sums["examples"]}

  def selection_metric(self, summary, split):
    return -summary[f"{split}/masked_mse"]
