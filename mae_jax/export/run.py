"""Reading a pretraining run's workdir: its config, model, dataset metadata and params."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mae_jax import experiment
from mae_jax.errors import MissingPathError, UsageError
from mae_jax.data import meta as meta_lib
from mae_jax.models import mae as mae_lib
from mae_jax.models import registry


def _find_meta(workdir: str, data_dir: str) -> dict | None:
  """The dataset metadata under data.dir (absolute, or relative to the workdir), or None."""
  if not data_dir:
    return None
  for cand in (data_dir, os.path.join(workdir, data_dir)):
    if os.path.exists(os.path.join(cand, meta_lib.META_FILE)):
      return meta_lib.load_meta(cand)
  return None


def load_run(workdir: str, image_shape=None) -> dict:
  """Config, model, image shape and dataset metadata of a pretraining run's workdir.

  The model is built by `experiment.build_model` from the saved `config.json`, so it
  keeps the run's settings (compute dtype, attention kernel); any MAE-family
  `model.name` (registry.MAE_FAMILY) is accepted.

  Args:
    workdir: the training workdir (config.json, checkpoints/).
    image_shape: (H, W, C); default the dataset metadata's, which is then required.

  Returns:
    {"config": the saved config (plain dict), "model", "image_shape", "meta" (dataset
    metadata or None), "data_dir"}.

  Raises:
    FileNotFoundError: no dataset metadata and no `image_shape`.
    ValueError: `image_shape` differs from the dataset's, the run's model is not a
      masked autoencoder, or its patch does not divide the image.
  """
  with open(os.path.join(workdir, "config.json")) as f:
    cfg = json.load(f)
  data_dir = (cfg.get("data") or {}).get("dir") or ""
  meta = _find_meta(workdir, data_dir)
  if image_shape is None:
    if meta is None:
      where = os.path.join(data_dir or "<config data.dir empty>", meta_lib.META_FILE)
      raise MissingPathError(
          f"dataset metadata {where} not found; pass --image-shape H,W,C (the sidecar will "
          "then say the channel statistics are missing)")
    image_shape = tuple(meta["image_shape"])
  image_shape = tuple(int(s) for s in image_shape)
  if meta is not None and tuple(meta["image_shape"]) != image_shape:
    raise UsageError(f"--image-shape {image_shape} differs from the dataset's "
                     f"{tuple(meta['image_shape'])}")
  name = cfg["model"].get("name", "mae")
  if name not in registry.MAE_FAMILY:
    raise UsageError(f"{workdir} holds a {name!r} model; export takes the pretraining runs of "
                     f"masked autoencoders ({sorted(registry.MAE_FAMILY)}); for a finetuned "
                     "classifier export the pretraining run it started from")
  mae_lib.check_image_shape(image_shape, cfg["model"]["patch"])
  config = ml_collections.ConfigDict(cfg)
  config.model.name = name  # configs from before model.name existed meant the ViT MAE
  model = experiment.build_model(config, image_shape)
  return {"config": cfg, "model": model, "image_shape": image_shape, "meta": meta,
          "data_dir": data_dir}


def restore_params(workdir: str, model, image_shape, step: int | None = None):
  """Restores only the `params` subtree (numpy, on host) of a checkpoint.

  The abstract tree comes from the model, so the optimizer state is never read and a
  checkpoint of another model fails on its shapes (checkpoint.read_arrays).

  Args:
    workdir: the training workdir.
    model: the run's model (`load_run(...)["model"]`).
    image_shape: (H, W, C).
    step: the checkpoint step; default the latest.

  Returns:
    (params of numpy arrays, the step restored).
  """
  from mae_jax import checkpoint  # orbax: slow to import, only needed here
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  abstract = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "masking": jax.random.key(0)}, dummy, train=False)["params"])
  item = {"params": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)}
  out, step = checkpoint.read_arrays(workdir, step, item)
  return jax.tree.map(np.asarray, out["params"]), step
