"""Shared test helpers: small configs and model set-ups."""

import importlib.util
import os
import subprocess
import sys

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name="pretrain", arg="variant=tiny", **overrides):
  """configs/<name>.py:get_config(arg) with dotted-key overrides, e.g. optim__b1=0.8."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def train_setup(config, image_shape, mesh):
  """(model, experiment.StateSetup, jitted train step) as the trainer builds them."""
  from mae_jax import experiment, tasks
  model = experiment.build_model(config, image_shape)
  setup = experiment.create_state(config, model, mesh, image_shape)
  return model, setup, experiment.make_train_step(config, model, tasks.build(config), setup, mesh)


def write_small_e2e(path, n=(48, 16, 16), hw=25, c=3, seed=0):
  """Sparse images in the public `{split}_jet` / `{split}_meta` layout, small for speed.

  Learnable toy physics: every jet has a blob at the centre plus sparse noise;
  label-1 jets have a second blob in the top-left quadrant (a two-prong jet),
  and the "jet mass" target grows with the second blob's energy.
  """
  rng = np.random.default_rng(seed)
  with h5py.File(path, "w") as f:
    for split, count in zip(("train", "validation", "test"), n):
      x = np.zeros((count, hw, hw, c), np.float32)
      x[:, hw // 2 - 2:hw // 2 + 3, hw // 2 - 2:hw // 2 + 3, :] = rng.exponential(5.0, (count, 5, 5, c))
      label = (np.arange(count) % 2).astype(np.float32)
      rng.shuffle(label)
      prong = rng.exponential(5.0, (count, 5, 5, c)) * label[:, None, None, None]
      x[:, 2:7, 2:7, :] += prong
      noise = rng.random((count, hw, hw, c)) < 0.02
      x[noise] += rng.exponential(1.0, int(noise.sum()))
      mass = 50.0 + prong.sum((1, 2, 3)) + rng.normal(0, 5, count)
      meta = np.stack([label, mass, rng.normal(80, 5, count)], 1).astype(np.float32)
      f.create_dataset(f"{split}_jet", data=x)
      f.create_dataset(f"{split}_meta", data=meta)


def run_main(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "mae_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def converted_dataset(directory, n=(48, 16, 16)):
  """write_small_e2e + mae_jax.data.convert into directory/tfds; returns that path."""
  from mae_jax.data import convert
  write_small_e2e(directory / "small.h5", n=n)
  convert.convert([str(directory / "small.h5")], str(directory / "tfds"))
  return str(directory / "tfds")
