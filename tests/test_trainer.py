"""Trainer end to end on a tiny converted dataset: logs, figures, checkpoints, resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mae_jax import checkpoint, errors, experiment, trainer
from helpers import converted_dataset, load_config, run_main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return converted_dataset(tmp_path_factory.mktemp("data"))


def config_for(dataset, **kw):
  c = load_config(batch_size=8, total_steps=6, warmup_steps=2, lr=1e-3, ckpt_every=3,
                  log_every=1, keep_ckpts=5)
  c.data.dir = dataset
  c.data.shuffle_buffer = 64
  for k, v in kw.items():
    c[k] = v
  return c


def params_at(workdir, step):
  return checkpoint.read_arrays(workdir, step, "params")[0]["params"]


def test_train_writes_logs_figures_checkpoints_and_resumes_exactly(dataset, tmp_path):
  full = str(tmp_path / "full")
  final = trainer.train_and_evaluate(config_for(dataset), full)
  for name in ("metrics.jsonl", "loss_curve.png", "reconstruction.png", "config.json"):
    assert os.path.exists(os.path.join(full, name)), name
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(full))
  rows = checkpoint.read_history(full)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  # validation and test summaries are machine-readable there too (not only in TensorBoard)
  evals = checkpoint.read_history(full, train=False)
  assert any("validation/masked_mse" in r for r in evals) and "test/masked_mse" in evals[-1]
  assert final["validation/examples"] == 16 and np.isfinite(final["validation/masked_mse"])
  assert sorted(ocp.CheckpointManager(os.path.join(full, "checkpoints")).all_steps()) == [3, 6]

  # Interrupted run: stop after 3 steps, then resume in the same workdir to 6.
  part = str(tmp_path / "part")
  trainer.train_and_evaluate(config_for(dataset, total_steps=3), part)
  with pytest.raises(ValueError, match="different 'batch_size'"):
    trainer.train_and_evaluate(config_for(dataset, batch_size=16), part)
  trainer.train_and_evaluate(config_for(dataset, total_steps=6), part)
  resumed_rows = checkpoint.read_history(part)
  assert [r["step"] for r in resumed_rows] == [1, 2, 3, 4, 5, 6]  # continued at step 4
  # Same data order and masks after resume: same losses and bit-identical parameters.
  assert [r["loss"] for r in resumed_rows] == [r["loss"] for r in rows]
  a, b = params_at(full, 6), params_at(part, 6)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # every family's sharded step is shown to learn in test_hybrid / test_sparse
def test_loss_goes_down(dataset, tmp_path):
  c = config_for(dataset, total_steps=40, warmup_steps=5, lr=1.5e-2, ckpt_every=100, figures=False)
  c.data.eval_split = ""
  trainer.train_and_evaluate(c, str(tmp_path / "w"))
  rows = checkpoint.read_history(str(tmp_path / "w"))
  first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
  assert last < 0.8 * first, (first, last)


def test_nan_stops_with_step_and_last_checkpoint(dataset, tmp_path):
  c = config_for(dataset, lr=1e30, total_steps=6, warmup_steps=0, figures=False)
  with pytest.raises(errors.NonFiniteError, match=r"non-finite loss or gradient at step \d+"):
    trainer.train_and_evaluate(c, str(tmp_path / "nan"))
  c = config_for(dataset, lr=1e30, total_steps=4, warmup_steps=0, figures=False, nan_policy="skip")
  c.data.eval_split = c.data.test_split = ""
  out = trainer.train_and_evaluate(c, str(tmp_path / "skip"))
  assert out["skipped_steps"] >= 1
  # step 1's update (finite loss and gradient) already made the parameters diverge, so every
  # later step was skipped: evaluating them must fail, not report metrics of NaN outputs
  c.data.test_split = "test"
  with pytest.raises(errors.NonFiniteError, match="non-finite model outputs"):
    trainer.train_and_evaluate(c, str(tmp_path / "skip"))


def test_cli_rejects_unknown_override_and_bad_variant(dataset, tmp_path):
  r = run_main("--config", "configs/pretrain.py:variant=tiny", "--workdir", str(tmp_path / "a"),
               "--config.no_such_field=1")
  assert r.returncode != 0 and "no_such_field" in r.stderr
  r = run_main("--config", "configs/pretrain.py:varaint=tiny", "--workdir", str(tmp_path / "b"))
  assert r.returncode != 0 and "unknown config argument 'varaint'" in r.stderr
  r = run_main("--config", "configs/pretrain.py:variant=huge", "--workdir", str(tmp_path / "c"),
               f"--config.data.dir={dataset}", "--config.total_steps=1", "--config.batch_size=8")
  assert r.returncode == 2 and "Unknown model variant 'huge'" in r.stderr
  r = run_main("--config", "configs/pretrain.py:variant=tiny", "--workdir", str(tmp_path / "d"),
               f"--config.data.dir={dataset}", "--config.model.patch=4", "--config.batch_size=8")
  assert r.returncode == 2 and "patch size 4 does not divide the image size 25x25" in r.stderr


def test_cli_trains_with_overrides(dataset, tmp_path):
  r = run_main("--config", "configs/pretrain.py:variant=tiny", "--workdir", str(tmp_path / "w"),
               f"--config.data.dir={dataset}", "--config.total_steps=4", "--config.batch_size=8",
               "--config.log_every=2", "--config.model.mask_ratio=0.5")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "step 4/4" in r.stdout and "img/s" in r.stdout and "ETA" in r.stdout
  # quiet by default: progress and results; absl's INFO lines only with --verbosity=0
  assert not [ln for ln in r.stderr.splitlines() if ln.startswith("I1") or ln.startswith("I0")]
  saved = json.load(open(tmp_path / "w" / "config.json"))
  assert saved["model"]["mask_ratio"] == 0.5 and saved["total_steps"] == 4


def test_evaluate_refuses_non_finite_outputs():
  # a last update that makes the parameters diverge passes the step's own finiteness check;
  # the evaluation must then fail clearly instead of computing metrics of NaN scores
  from mae_jax import parallel
  mesh = parallel.make_mesh([("data", -1)])

  class Pipe:
    def eval_iter(self, split, local, global_batch):
      return 1, iter([{"image": np.zeros((8, 2), np.float32), "label": np.ones(8, np.int32),
                       "valid": np.ones(8, np.float32)}])

  def eval_step(params, model_state, batch, index):
    return {"score": jnp.full((8,), jnp.nan), "label": batch["label"], "valid": batch["valid"]}

  config = load_config("probe")
  config.batch_size = 8
  with pytest.raises(errors.NonFiniteError, match=r"non-finite model outputs \(score\) on the "
                                                   r"'validation' split"):
    experiment.evaluate(eval_step, {"params": {}, "model_state": {}}, Pipe(), "validation",
                        config, mesh, task=None)


def test_check_workdir_ignores_fields_added_later_at_their_default(tmp_path):
  config = load_config("finetune")
  saved = json.loads(config.to_json_best_effort())
  del saved["model"]["attention"]  # a run made before this field existed (default "auto")
  (tmp_path / "config.json").write_text(json.dumps(saved))
  trainer.check_workdir(str(tmp_path), config)  # same model: no error
  del saved["model"]["head_init_std"]  # finetune sets 2e-5, not the 0.01 default: a change
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(ValueError, match="different 'model'"):
    trainer.check_workdir(str(tmp_path), config)


def test_eta_leaves_out_compilation():
  """Fake clock: step 1 compiles for 120 s, step 4 recompiles (a new token bucket) for 60 s,
  every other step takes 0.5 s. The ETA at step 10 of 100 is 90 steps x 0.5 s = 0.75 min
  (the old estimate, compile included: ~18 min); img/s is batch / 0.5 s."""
  from mae_jax import progress
  durations = {1: 120.0, 4: 60.0}
  now = [1000.0]
  p = progress.Progress(100, 32, 0, clock=lambda: now[0])
  for step in range(1, 11):
    now[0] += durations.get(step, 0.5)
    p.tick(step)
  line = p.line(10, {"loss": 0.1, "lr": 1e-3})
  assert "ETA 0.8 min" in line and "64.0 img/s" in line, line
  assert p.step_seconds() == 0.5
  resumed = progress.Progress(100, 32, 50, clock=lambda: now[0])
  resumed.tick(51)  # the first step of a resumed run compiles too: never timed
  assert np.isnan(resumed.step_seconds())
