"""What a stage optimises and reports, chosen by `config.task.name` (big_vision picks
losses and evaluators by name the same way).

  mae       the masked patches against `task.target` (tasks/targets/): pixels (MSE; eval:
            masked-patch MSE and the predict-zeros baseline) or codes (cross-entropy;
            eval: cross-entropy, code accuracy and the code-frequency baseline).
  classify  binary cross-entropy on the label; eval: exact ROC AUC, accuracy,
            background rejection, from the scores of the whole split.
  regress   MSE or Huber on standardised targets; eval: MAE, resolution, bias, R^2
            in physical units.

Every task has the interface of `base.Task`: the model returns `(output, aux)` and the
task turns it into the loss (`loss`), eval outputs and metrics, and the files a finished
run leaves (`artefacts`: classify the test scores, mae the reconstruction figure). Eval steps return per-batch sums or
per-example arrays; the host accumulates them over the whole split (never
per-batch averages).
"""

from __future__ import annotations

from mae_jax.errors import UsageError
from mae_jax.tasks import base, classify, mae, regress
from mae_jax.tasks.base import RunOutputs  # noqa: F401  (what `Task.artefacts` receives)

TASKS = {"mae": mae.MaeTask, "classify": classify.ClassifyTask, "regress": regress.RegressTask}


def build(config, pipe=None, workdir=None) -> base.Task:
  """The task of `config.task.name`; `pipe` (a data.pipeline.Pipeline) supplies what a task
  needs from the data (label counts, regression target statistics, the codebook of code
  targets); `workdir` keeps what was fitted there, so that a resumed run reuses it."""
  name = config.task.name
  if name not in TASKS:
    raise UsageError(f"task.name={name!r}; choose one of {tuple(TASKS)}")
  return TASKS[name].from_data(config, pipe, workdir)
