"""Regression: the model returns (outputs [B, K], aux); MSE or Huber on the targets
`config.task.targets` standardised with train-split statistics; eval in physical units."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mae_jax.errors import UsageError
from mae_jax.evaluate import metrics as metrics_lib
from mae_jax.models import heads
from mae_jax.tasks import base


def target_names(config) -> list[str]:
  return [t.strip() for t in config.task.targets.split(",") if t.strip()]


def target_stats(pipe, split: str, idx) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std of the chosen regression targets over a split (float64)."""
  vals = [np.asarray(ex["targets"])[idx] for ex in pipe.targets_only(split)]
  arr = np.asarray(vals, np.float64)
  return arr.mean(0), arr.std(0)


class RegressTask(base.Task):
  name = "regress"

  def __init__(self, config, dataset_targets, mean, std):
    """`dataset_targets`: the dataset's target names; `mean`/`std`: train-split statistics of
    the chosen targets."""
    super().__init__(config)
    wanted = target_names(config)
    missing = [t for t in wanted if t not in dataset_targets]
    if not wanted or missing:
      raise UsageError(f"task.targets={config.task.targets!r}: the dataset has targets "
                       f"{list(dataset_targets)}")
    self.target_names = wanted
    self.target_idx = np.array([list(dataset_targets).index(t) for t in wanted])
    self.target_mean = jnp.asarray(mean, jnp.float32)
    self.target_std = jnp.asarray(np.maximum(std, 1e-6), jnp.float32)

  @classmethod
  def from_data(cls, config, pipe, workdir=None):
    if pipe is None:
      raise UsageError("task 'regress' needs the dataset (target names and statistics)")
    names = list(pipe.meta.get("target_names", []))
    idx = [names.index(t) for t in target_names(config) if t in names]
    mean, std = target_stats(pipe, config.data.train_split, np.array(idx, int)) if idx \
        else (np.zeros(0), np.ones(0))
    return cls(config, names, mean, std)

  def _standardized(self, batch):
    return (batch["targets"][:, self.target_idx] - self.target_mean) / self.target_std

  def loss(self, out, batch):
    if self.config.task.loss == "huber":
      return heads.huber(out[0], self._standardized(batch), self.config.task.huber_delta)
    return heads.mse(out[0], self._standardized(batch))

  def eval_outputs(self, out, batch):
    pred = out[0].astype(jnp.float32) * self.target_std + self.target_mean
    return {"pred": pred, "true": batch["targets"][:, self.target_idx], "valid": batch["valid"]}

  def summarize(self, outputs, split):
    cat, keep = base.concat_valid(outputs)
    out = {f"{split}/examples": float(keep.sum())}
    for i, name in enumerate(self.target_names):
      m = metrics_lib.regression_metrics(cat["true"][keep, i], cat["pred"][keep, i])
      out.update({f"{split}/{name}_{k}": float(v) for k, v in m.items()})
    return out

  def selection_metric(self, summary, split):
    return -sum(summary[f"{split}/{n}_mae"] / max(abs(float(m)), 1e-6)
                for n, m in zip(self.target_names, np.asarray(self.target_mean)))
