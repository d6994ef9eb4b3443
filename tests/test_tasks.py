"""Tasks own the objective: the model returns (pred, aux), the task builds targets, loss,
eval sums and artefacts; a new MAE objective is one module in tasks/targets/ + a config value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import tasks
from mae_jax.models import mae as mae_lib
from mae_jax.tasks import mae as mae_task
from mae_jax.tasks import targets as targets_lib
from helpers import load_config

RNGS = {"params": jax.random.key(0), "masking": jax.random.key(1)}


@pytest.fixture(scope="module")
def dense():
  model = mae_lib.MAE(variant="tiny", patch=5, channels=3)
  x = jax.random.uniform(jax.random.key(3), (2, 25, 25, 3))
  variables = model.init(RNGS, x)
  out = model.apply(variables, x, noise=jax.random.uniform(jax.random.key(4), (2, 25)))
  return x, out


def test_training_loss_and_eval_sums_are_one_function(dense):
  """With every example real, eval's sq_err / count is the training loss (float64 reference
  below, 1e-6), and predict-zeros is the mean square of the masked patches."""
  x, out = dense
  task = tasks.build(load_config())
  batch = {"image": x, "valid": jnp.ones((2,), jnp.float32)}
  loss = float(task.loss(out, batch))
  ev = jax.tree.map(float, task.eval_outputs(out, batch))
  target = np.asarray(mae_lib.patchify(x, 5), np.float64)
  mask = np.asarray(out[1]["mask"], np.float64)
  want = (((np.asarray(out[0], np.float64) - target) ** 2).mean(-1) * mask).sum() / mask.sum()
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  np.testing.assert_allclose(ev["mse"] / ev["count"], loss, rtol=1e-6)
  np.testing.assert_allclose(ev["mse_predict_zeros"] / ev["count"],
                             ((target**2).mean(-1) * mask).sum() / mask.sum(), rtol=1e-6)


def test_a_new_objective_is_one_module_and_a_config_value(dense, tmp_path, monkeypatch):
  """A target module dropped into tasks/targets/ (here: from tmp_path) is chosen by
  task.target; the model and the loop are untouched."""
  (tmp_path / "energy.py").write_text('''
import jax.numpy as jnp
from mae_jax.models import mae as mae_lib


class Targets:
  """Each patch's total energy (a toy second objective)."""
  def __init__(self, patch):
    self.patch = patch

  @classmethod
  def from_config(cls, config):
    return cls(config.model.patch)

  def __call__(self, images, slot_ids=None):
    return mae_lib.patchify(images, self.patch).sum(-1, keepdims=True)

  def errors(self, pred, targets):
    return jnp.abs(pred.sum(-1, keepdims=True) - targets)[..., 0]

  def baseline(self, targets):
    return jnp.abs(targets)[..., 0]
''')
  monkeypatch.setattr(targets_lib, "__path__", [*targets_lib.__path__, str(tmp_path)])
  assert "energy" in targets_lib.names() and "pixels" in targets_lib.names()
  x, out = dense
  task = tasks.build(load_config(task__target="energy"))
  got = float(task.loss(out, {"image": x}))
  e = np.abs(np.asarray(out[0], np.float64).sum(-1) - np.asarray(mae_lib.patchify(x, 5)).sum(-1))
  mask = np.asarray(out[1]["mask"], np.float64)
  np.testing.assert_allclose(got, (e * mask).sum() / mask.sum(), rtol=1e-5)


def test_unknown_target_is_a_one_line_error():
  with pytest.raises(ValueError, match=r"task.target='tokens'; choose one of \['codes', 'pixels'\]"):
    tasks.build(load_config(task__target="tokens"))


def test_artefacts_hook_default_and_classify_scores(tmp_path):
  """Every task has the hook (regress: nothing written); classify writes the test split's
  labels and scores of real examples only."""
  config = load_config()
  config.task.name = "classify"
  task = tasks.build(config)
  outputs = [{"score": np.array([0.5, -1.0], np.float32), "label": np.array([1, 0]),
              "valid": np.array([1.0, 0.0])},
             {"score": np.array([2.0, 0.1], np.float32), "label": np.array([0, 1]),
              "valid": np.array([1.0, 1.0])}]
  run = tasks.RunOutputs(config=config, model=None, params=None, pipe=None, mesh=None,
                         split="validation", test_split="test", test_outputs=outputs)
  task.artefacts(str(tmp_path), run)
  saved = np.load(tmp_path / "test_scores.npz")
  np.testing.assert_array_equal(saved["label"], [1, 0, 1])
  np.testing.assert_array_equal(saved["score"], np.float32([0.5, 2.0, 0.1]))
  tasks.base.Task.artefacts(task, str(tmp_path / "none"), run)  # the default writes nothing
  assert not (tmp_path / "none").exists()
