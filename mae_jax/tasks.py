"""What a stage optimises and reports, chosen by `config.task.name`.

  mae       the model returns (loss, aux); eval: masked-patch MSE and the
            predict-zeros baseline (sums over the split).
  classify  the model returns (logits [B, 1], aux); binary cross-entropy on the
            label (optional label smoothing); eval: exact ROC AUC, accuracy,
            background rejection, from the scores of the whole split.
  regress   the model returns (outputs [B, K], aux); MSE or Huber on the
            standardised targets `config.task.targets` (names from the dataset);
            eval: MAE, resolution, bias and R^2 in physical units.

Every eval step returns per-batch sums or per-example arrays; the host
accumulates them over the whole split (never per-batch averages).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mae_jax.evaluate import metrics as metrics_lib
from mae_jax.models import heads
from mae_jax.models import mae as mae_lib

TASKS = ("mae", "classify", "regress")


class Task:
  """Loss for training, per-batch eval outputs, and the split summary."""

  def __init__(self, config, meta: dict):
    self.config = config
    self.name = config.task.name
    if self.name not in TASKS:
      raise ValueError(f"task.name={self.name!r}; choose one of {TASKS}")
    self.target_idx, self.target_mean, self.target_std = None, None, None
    if self.name == "regress":
      names = list(meta.get("target_names", []))
      wanted = [t.strip() for t in config.task.targets.split(",") if t.strip()]
      missing = [t for t in wanted if t not in names]
      if not wanted or missing:
        raise ValueError(f"task.targets={config.task.targets!r}: the dataset has targets {names}")
      self.target_idx = np.array([names.index(t) for t in wanted])
      self.target_names = wanted
    if self.name == "classify":
      counts = meta["splits"].get(config.data.train_split, {}).get("label_counts", {})
      if counts and set(map(str, counts)) - {"0", "1"}:
        raise ValueError(f"task 'classify' needs labels 0/1 in split {config.data.train_split!r}; "
                         f"the dataset has label counts {counts} (unlabelled data is -1)")

  def set_target_stats(self, mean, std):
    self.target_mean = jnp.asarray(mean, jnp.float32)
    self.target_std = jnp.asarray(np.maximum(std, 1e-6), jnp.float32)

  def loss(self, out, batch):
    if self.name == "mae":
      return out[0]
    if self.name == "classify":
      return heads.binary_cross_entropy_with_logits(out[0], batch["label"],
                                                    self.config.task.label_smoothing)
    target = (batch["targets"][:, self.target_idx] - self.target_mean) / self.target_std
    if self.config.task.loss == "huber":
      return heads.huber(out[0], target, self.config.task.huber_delta)
    return heads.mse(out[0], target)

  def eval_outputs(self, out, batch):
    """Per-batch sums (mae) or per-example arrays (classify, regress)."""
    valid = batch["valid"]
    if self.name == "mae":
      _, aux = out
      target = aux["target"].astype(jnp.float32)
      if self.config.model.get("norm_pix_loss", False):
        target = mae_lib.normalize_patches(target)
      per_patch = jnp.mean((aux["pred"].astype(jnp.float32) - target) ** 2, axis=-1)
      zeros = jnp.mean(target**2, axis=-1)  # a model that predicts empty patches
      weight = aux["mask"] * valid[:, None]
      return {"sq_err": jnp.sum(per_patch * weight), "zero_sq_err": jnp.sum(zeros * weight),
              "count": jnp.sum(weight), "examples": jnp.sum(valid)}
    if self.name == "classify":
      return {"score": out[0].reshape(-1).astype(jnp.float32), "label": batch["label"],
              "valid": valid}
    pred = out[0].astype(jnp.float32) * self.target_std + self.target_mean
    return {"pred": pred, "true": batch["targets"][:, self.target_idx], "valid": valid}

  def summarize(self, outputs: list[dict], split: str) -> dict:
    """Metrics over the whole split, in float64 on the host."""
    if self.name == "mae":
      sums = {k: float(np.sum([np.asarray(o[k], np.float64) for o in outputs])) for k in outputs[0]}
      count = max(sums["count"], 1.0)
      return {f"{split}/masked_mse": sums["sq_err"] / count,
              f"{split}/masked_mse_predict_zeros": sums["zero_sq_err"] / count,
              f"{split}/examples": sums["examples"]}
    cat = {k: np.concatenate([np.asarray(o[k]) for o in outputs]) for k in outputs[0]}
    keep = cat["valid"] > 0
    if self.name == "classify":
      labels, scores = cat["label"][keep].astype(np.int64), cat["score"][keep].astype(np.float64)
      rep = metrics_lib.classification_report(labels, scores, logits=True,
                                              n_bootstrap=self.config.task.bootstrap)
      out = {f"{split}/{k}": float(v) for k, v in rep.items() if np.isscalar(v)}
      out[f"{split}/examples"] = float(keep.sum())
      return out
    out = {f"{split}/examples": float(keep.sum())}
    for i, name in enumerate(self.target_names):
      m = metrics_lib.regression_metrics(cat["true"][keep, i], cat["pred"][keep, i])
      out.update({f"{split}/{name}_{k}": float(v) for k, v in m.items()})
    return out

  def selection_metric(self, summary: dict, split: str) -> float:
    """Larger is better; picks the checkpoint on the validation split."""
    if self.name == "mae":
      return -summary[f"{split}/masked_mse"]
    if self.name == "classify":
      return summary[f"{split}/auc"]
    return -sum(summary[f"{split}/{n}_mae"] / max(abs(float(m)), 1e-6)
                for n, m in zip(self.target_names, np.asarray(self.target_mean)))


def host_targets_stats(pipe, split: str, idx) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std of the chosen regression targets over a split (float64)."""
  vals = [np.asarray(ex["targets"])[idx] for ex in pipe.targets_only(split)]
  arr = np.asarray(vals, np.float64)
  return arr.mean(0), arr.std(0)
