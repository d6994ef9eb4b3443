"""Binary classification: the model returns (logits [B, 1], aux); BCE on the 0/1 label
(optional label smoothing); eval from the scores of the whole split."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.errors import UsageError
from mae_jax.evaluate import metrics as metrics_lib
from mae_jax.models import heads
from mae_jax.tasks import base


class ClassifyTask(base.Task):
  name = "classify"

  @classmethod
  def from_data(cls, config, pipe, workdir=None):
    if pipe is not None:
      counts = pipe.meta["splits"].get(config.data.train_split, {}).get("label_counts", {})
      if counts and set(map(str, counts)) - {"0", "1"}:
        raise UsageError(f"task 'classify' needs labels 0/1 in split {config.data.train_split!r};"
                         f" the dataset has label counts {counts} (unlabelled data is -1)")
    return cls(config)

  def loss(self, out, batch):
    return heads.binary_cross_entropy_with_logits(out[0], batch["label"],
                                                  self.config.task.label_smoothing)

  def eval_outputs(self, out, batch):
    return {"score": out[0].reshape(-1).astype(jnp.float32), "label": batch["label"],
            "valid": batch["valid"]}

  def summarize(self, outputs, split):
    cat, keep = base.concat_valid(outputs)
    labels, scores = cat["label"][keep].astype(np.int64), cat["score"][keep].astype(np.float64)
    rep = metrics_lib.classification_report(labels, scores, logits=True,
                                            n_bootstrap=self.config.task.bootstrap)
    out = {f"{split}/{k}": float(v) for k, v in rep.items() if np.isscalar(v)}
    out[f"{split}/examples"] = float(keep.sum())
    return out

  def selection_metric(self, summary, split):
    return summary[f"{split}/auc"]

  def artefacts(self, workdir, run):
    """{test_split}_scores.npz: labels and scores of the test split's real examples."""
    if run.test_outputs is None or jax.process_index() != 0:
      return
    cat, keep = base.concat_valid(run.test_outputs)
    np.savez(os.path.join(workdir, f"{run.test_split}_scores.npz"), label=cat["label"][keep],
             score=cat["score"][keep])
