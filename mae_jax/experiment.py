"""Builders of a run: model, sharded state, pretrained weights, train and eval steps.

The loop (`trainer.py`), the benchmark, the protocol and the comparison all build
their runs here. `train_step` and `eval_step` are pure top-level functions (as
in the flax ImageNet example); `make_train_step` / `make_eval_step` jit them
over the mesh with the state donated.

State is a dict {"step", "params", "opt_state", "model_state"} (model_state:
BatchNorm statistics, empty for the MAE) created by `jax.jit(init,
out_shardings=...)` directly in its target sharding. Randomness derives from
(seed, step) only: the masking noise of step k is `fold_in(key(seed), k)` and
the data order is a function of (seed, step) (data/pipeline.py), so a resumed
run sees the same batches and masks as an uninterrupted one.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from mae_jax import checkpoint, errors, optim, parallel
from mae_jax.models import registry
from mae_jax.tasks import targets

MASK_STREAM, DROPOUT_STREAM = 1, 2

StateSetup = collections.namedtuple("StateSetup", "state shardings tx schedule")


def build_model(config, image_shape):
  """The config's model; an MAE's decoder predicts what its target needs (pixels or codes)."""
  pred_dim = targets.pred_dim(config) if config.model.name in registry.MAE_FAMILY else 0
  return registry.build_model(config, image_shape, pred_dim)


def step_keys(seed: int, step):
  """(masking key, dropout key) of training step `step` (or eval batch `step`)."""
  base = jax.random.key(seed)
  return (jax.random.fold_in(jax.random.fold_in(base, MASK_STREAM), step),
          jax.random.fold_in(jax.random.fold_in(base, DROPOUT_STREAM), step))


def apply_model(model, params, model_state, batch, train, mask_key, drop_key):
  """Forward pass of any stage's model on a batch; returns (output, new model_state)."""
  variables = {"params": params, **model_state}
  rngs = {"masking": mask_key, "dropout": drop_key}
  kw = registry.model_inputs(batch)
  if train and model_state:
    return model.apply(variables, batch["image"], train=True, rngs=rngs,
                       mutable=list(model_state), **kw)
  return model.apply(variables, batch["image"], train=train, rngs=rngs, **kw), model_state


def load_pretrained(config, params):
  """Copies sub-trees of another run's parameters into `params` (config.model_init).

  `model_load` lists "src:dst" pairs of "/"-joined sub-tree paths, e.g.
  "encoder:backbone/encoder" puts a pretrain run's encoder under the classifier.
  Every destination leaf must exist in the source with the same shape.
  """
  src_dir = config.model_init
  restored, step = checkpoint.read_arrays(src_dir, item="params")
  src_flat = traverse_util.flatten_dict(restored["params"], sep="/")
  dst_flat = traverse_util.flatten_dict(params, sep="/")
  loaded = 0
  for pair in filter(None, (p.strip() for p in config.model_load.split(","))):
    src, dst = pair.split(":") if ":" in pair else (pair, pair)
    targets = {k: v for k, v in dst_flat.items() if k.startswith(dst + "/")}
    if not targets:
      raise errors.UsageError(f"model_load {pair!r}: this model has no parameters under {dst!r}")
    for k, v in targets.items():
      sk = src + k[len(dst):]
      if sk not in src_flat:
        raise errors.UsageError(
            f"model_init {src_dir} (step {step}) has no parameter {sk!r} for {k!r}")
      if tuple(src_flat[sk].shape) != tuple(v.shape):
        raise errors.UsageError(
            f"model_init {src_dir}: {sk!r} has shape {tuple(src_flat[sk].shape)} "
                         f"but this model's {k!r} needs {tuple(v.shape)} (a different variant, "
                         "patch or channel count?)")
      dst_flat[k] = jnp.asarray(src_flat[sk], v.dtype)
      loaded += 1
  logging.info("loaded %d arrays from %s step %d", loaded, src_dir, step)
  return traverse_util.unflatten_dict(dst_flat, sep="/"), step


def pipeline_tokens(config, train: bool = True):
  """The pipeline's sparse-token settings for this config (None for dense models)."""
  from mae_jax.data import pipeline as pipeline_lib
  if not registry.is_sparse(config):
    return None
  window = config.data.get("sort_window", 0) if train else 0
  return pipeline_lib.Tokens(config.model.patch, config.data.get("token_bucket", 16), window)


def make_pipeline(config, data_dir=None, train: bool = True):
  """The input pipeline of a run (this process's part of the data)."""
  from mae_jax.data import pipeline as pipeline_lib  # tensorflow import kept off module load
  return pipeline_lib.Pipeline(data_dir or config.data.dir, config.data.normalization,
                               jax.process_index(), jax.process_count(), config.data.host_split,
                               tokens=pipeline_tokens(config, train),
                               on_corrupt=config.data.get("on_corrupt", "stop"),
                               reflect=config.data.get("reflect", "none"))


def create_state(config, model, mesh, image_shape) -> StateSetup:
  """(state, state shardings, optimizer, lr schedule); the state lives in its target sharding."""
  dummy = jnp.zeros((1, *image_shape), jnp.float32)

  def init_variables():
    rngs = {"params": jax.random.key(config.seed), "masking": jax.random.key(0),
            "dropout": jax.random.key(0)}
    return model.init(rngs, dummy, train=False)

  abstract_vars = jax.eval_shape(init_variables)
  tx, schedule = optim.make_optimizer(config, abstract_vars["params"])

  def init(params=None):
    variables = init_variables()
    params = variables["params"] if params is None else params
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "model_state": model_state}

  shardings = parallel.state_shardings(mesh, jax.eval_shape(init))
  if config.get("model_init", ""):
    params, _ = load_pretrained(config, jax.device_get(jax.jit(lambda: init_variables()["params"])()))
    params = jax.device_put(params, shardings["params"])
    state = jax.jit(init, in_shardings=(shardings["params"],), out_shardings=shardings)(params)
  else:
    state = jax.jit(init, out_shardings=shardings)()
  return StateSetup(state, shardings, tx, schedule)


def train_step(state, batch, *, config, model, task, tx, schedule, frozen):
  """One optimizer step; returns (new state, metrics). Pure: randomness from (seed, step)."""
  mask_key, drop_key = step_keys(config.seed, state["step"])

  def loss_fn(params):
    # frozen parameters get no gradient at all, so XLA drops their backward pass
    # (a linear probe then costs a forward through the encoder only)
    params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
    out, model_state = apply_model(model, params, state["model_state"], batch, True, mask_key,
                                   drop_key)
    return task.loss(out, batch), model_state

  (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  new = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
         "opt_state": opt_state, "model_state": model_state}
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if config.nan_policy == "skip":  # keep the old state but move on to the next batch
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    new["step"] = state["step"] + 1
  metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]),
             "finite": finite}
  return new, metrics


def make_train_step(config, model, task, setup: StateSetup, mesh):
  """`train_step` jitted over the mesh, the state donated."""
  frozen = optim.frozen_mask(setup.shardings["params"], config.optim.get("frozen", ""))
  step = functools.partial(train_step, config=config, model=model, task=task, tx=setup.tx,
                           schedule=setup.schedule, frozen=frozen)
  return jax.jit(step, in_shardings=(setup.shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(setup.shardings, parallel.replicated(mesh)), donate_argnums=(0,))


def eval_step(params, model_state, batch, index, *, config, model, task):
  """Per-batch eval outputs; MAE masks are fixed per batch index (the seed + 1 stream)."""
  mask_key, drop_key = step_keys(config.seed + 1, index)
  out, _ = apply_model(model, params, model_state, batch, False, mask_key, drop_key)
  return task.eval_outputs(out, batch)


def make_eval_step(config, model, task, shardings, mesh):
  step = functools.partial(eval_step, config=config, model=model, task=task)
  return jax.jit(step, in_shardings=(shardings["params"], shardings["model_state"],
                                     parallel.batch_sharding(mesh), None),
                 out_shardings=parallel.replicated(mesh))


def evaluate(eval_fn, state, pipe, split, config, mesh, task, return_outputs=False):
  """Summary over a whole split (and, with `return_outputs`, the per-batch eval outputs on the
  host, for the task's artefacts)."""
  local = config.batch_size // jax.process_count()
  _, it = pipe.eval_iter(split, local, config.batch_size)
  outputs = [parallel.to_host(eval_fn(state["params"], state["model_state"],
                                      parallel.global_batch(batch, mesh), i))
             for i, batch in enumerate(it)]
  bad = sorted({k for o in outputs for k, v in o.items()
                if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()})
  if bad:  # the parameters diverged (e.g. in the last update, after the step's own check)
    raise errors.NonFiniteError(
        f"non-finite model outputs ({', '.join(bad)}) on the {split!r} split: the parameters "
        "diverged. Lower the lr or enable optim.grad_clip_norm.")
  summary = task.summarize(outputs, split)
  return (summary, outputs) if return_outputs else summary
