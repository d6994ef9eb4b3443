"""The interface every task implements."""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class RunOutputs:
  """What a finished run hands to `Task.artefacts`: the selected parameters, the data and
  the test split's eval outputs (None without a test split)."""
  config: Any
  model: Any
  params: Any
  pipe: Any
  mesh: Any
  split: str  # the split figures are drawn from (validation, else train)
  test_split: str
  test_outputs: list | None


class Task(abc.ABC):
  """Loss for training, per-batch eval outputs, the split summary, the selection rule."""
  name = ""

  def __init__(self, config):
    self.config = config

  @classmethod
  def from_data(cls, config, pipe, workdir=None):
    """The task for `config`, with whatever it needs read from the data pipeline (and what
    it fitted there saved in, or reused from, the run's `workdir`)."""
    del pipe, workdir
    return cls(config)

  @abc.abstractmethod
  def loss(self, out, batch):
    """Scalar training loss from the model output `(output, aux)` and the batch."""

  @abc.abstractmethod
  def eval_outputs(self, out, batch) -> dict:
    """Per-batch sums or per-example arrays (jittable)."""

  @abc.abstractmethod
  def summarize(self, outputs: list[dict], split: str) -> dict:
    """Metrics over a whole split from the eval outputs of all its batches (host, float64)."""

  @abc.abstractmethod
  def selection_metric(self, summary: dict, split: str) -> float:
    """Larger is better; picks the checkpoint on the validation split."""

  def artefacts(self, workdir: str, run: RunOutputs) -> None:
    """Files the task writes into `workdir` at the end of every run (figures, scores);
    called on every process (collective work allowed), none by default."""
    del workdir, run


def concat_valid(outputs: list[dict]) -> tuple[dict, np.ndarray]:
  """Per-example arrays of all batches, and the mask of real (not padding) examples."""
  cat = {k: np.concatenate([np.asarray(o[k]) for o in outputs]) for k in outputs[0]}
  return cat, cat["valid"] > 0
