"""Reliability: SIGTERM preemption, SIGKILL + exact resume, interrupted checkpoints, bad input."""

import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mae_jax import checkpoint, trainer
from mae_jax.data import pipeline
from helpers import ROOT, converted_dataset, load_config, run_main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return converted_dataset(tmp_path_factory.mktemp("rel"), n=(32, 8, 8))


def main_args(workdir, dataset, steps, *extra):
  return ["--config", "configs/pretrain.py:variant=tiny", "--workdir", str(workdir),
          f"--config.data.dir={dataset}", f"--config.total_steps={steps}",
          "--config.batch_size=8", "--config.log_every=1", "--config.ckpt_every=2",
          "--config.warmup_steps=2", "--config.lr=1e-3", "--config.figures=False",
          "--config.data.shuffle_buffer=64", *extra]


def start_main(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
  return subprocess.Popen([sys.executable, "-m", "mae_jax.main", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def wait_for_line(proc, prefix):
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(prefix):
      return lines
  raise AssertionError(f"process ended before printing {prefix!r}: {lines[-5:]}")


def params(workdir, step=None):
  tree, step = checkpoint.read_arrays(workdir, step, "params")
  return step, tree["params"]


def test_sigterm_saves_and_exits_cleanly_then_resumes(dataset, tmp_path):
  w = tmp_path / "pre"
  proc = start_main(*main_args(w, dataset, 500, "--config.ckpt_every=1000"))
  wait_for_line(proc, "step 3/500")
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-2000:]
  assert "preempted: SIGTERM received; checkpoint written at step" in out
  step, _ = params(w)
  assert 3 <= step < 500  # saved where it stopped, although ckpt_every=1000
  r = run_main(*main_args(w, dataset, step + 2, "--config.ckpt_every=1000"))
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"step {step + 1}/{step + 2}" in r.stdout and f"step {step}/" not in r.stdout


def test_sigkill_then_resume_is_bit_identical(dataset, tmp_path):
  ref = tmp_path / "ref"
  r = run_main(*main_args(ref, dataset, 8))
  assert r.returncode == 0, r.stderr[-2000:]
  _, want = params(ref, 8)

  w = tmp_path / "killed"
  proc = start_main(*main_args(w, dataset, 8))
  wait_for_line(proc, "step 5/8")
  proc.kill()  # SIGKILL: no handler runs, a save may be half written
  proc.wait()
  assert ocp.CheckpointManager(os.path.join(w, "checkpoints")).latest_step() in (2, 4)
  r = run_main(*main_args(w, dataset, 8))
  assert r.returncode == 0, r.stderr[-2000:]
  _, got = params(w, 8)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_interrupted_checkpoint_is_ignored_with_warning(dataset, tmp_path, capsys):
  w = str(tmp_path / "w")
  c = load_config(batch_size=8, total_steps=2, warmup_steps=1, ckpt_every=2, figures=False)
  c.data.dir, c.data.eval_split = dataset, ""
  trainer.train_and_evaluate(c, w)
  # what a save killed mid-write leaves: a temporary step directory, never renamed
  shutil.copytree(os.path.join(w, "checkpoints", "2"),
                  os.path.join(w, "checkpoints", "4.orbax-checkpoint-tmp-1795435678"))
  c.total_steps = 3
  trainer.train_and_evaluate(c, w)
  out = capsys.readouterr().out
  assert "ignoring interrupted checkpoint 4.orbax-checkpoint-tmp" in out
  assert "step 3/3" in out  # resumed from 2, not from the interrupted 4
  assert sorted(ocp.CheckpointManager(os.path.join(w, "checkpoints")).all_steps()) == [2, 3]


def test_truncated_shard_fails_fast(dataset, tmp_path):
  bad = tmp_path / "bad"
  shutil.copytree(dataset, bad)
  shard = next(p for p in os.listdir(bad) if "-train.tfrecord" in p)
  with open(bad / shard, "r+b") as f:
    f.truncate(os.path.getsize(bad / shard) - 100)
  with pytest.raises(ValueError, match="split 'train' shards hold .* truncated or corrupted"):
    pipeline.Pipeline(str(bad))
  os.remove(bad / shard)
  with pytest.raises(FileNotFoundError, match="split 'train' shard missing"):
    pipeline.Pipeline(str(bad))


def test_checkpoint_from_another_model_fails_clearly(dataset, tmp_path):
  w = str(tmp_path / "w")
  c = load_config(batch_size=8, total_steps=1, warmup_steps=1, figures=False)
  c.data.dir, c.data.eval_split = dataset, ""
  trainer.train_and_evaluate(c, w)
  os.remove(os.path.join(w, "config.json"))  # the guard by config is gone: the restore must catch it
  c2 = load_config("pretrain", "variant=small-e2e", batch_size=8, total_steps=2, figures=False)
  c2.data.dir, c2.data.eval_split = dataset, ""
  with pytest.raises(ValueError, match="does not fit this model"):
    trainer.train_and_evaluate(c2, w)


def test_bad_inputs_fail_before_training(dataset, tmp_path):
  r = run_main(*main_args(tmp_path / "a", dataset, 2, "--config.model.patch=4"))
  assert r.returncode == 2 and "patch size 4 does not divide the image size 25x25" in r.stderr
  r = run_main(*main_args(tmp_path / "b", str(tmp_path / "nowhere"), 2))
  assert r.returncode == 2 and "not a converted mae_jax dataset" in r.stderr
  r = run_main(*main_args(tmp_path / "c", dataset, 2, "--config.data.normalization=log2"))
  assert r.returncode == 2 and "data.normalization='log2'" in r.stderr
