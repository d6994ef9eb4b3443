"""The one training loop: state, sharded step, evaluation, checkpoints, logs.

State is a dict {"step", "params", "opt_state"} created by `jax.jit(init,
out_shardings=...)` directly in its target sharding. The step is
`jax.jit(..., donate_argnums=0)`. Randomness derives from (seed, step) only:
masking noise for step k is `fold_in(key(seed), k)`, and the data order is a
function of (seed, step) (see data/pipeline.py), so a resumed run sees the same
batches and masks as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers

from mae_jax import checkpoint, optim, parallel
from mae_jax.models import mae as mae_lib

MASK_STREAM, DROPOUT_STREAM = 1, 2


class NonFiniteError(RuntimeError):
  pass


def build_model(config, image_shape) -> mae_lib.MAE:
  m = config.model
  mae_lib.check_image_shape(image_shape, m.patch)
  return mae_lib.MAE(variant=m.variant, patch=m.patch, channels=int(image_shape[-1]),
                     mask_ratio=m.mask_ratio, norm_pix_loss=m.norm_pix_loss,
                     dtype=jnp.dtype(m.dtype))


def step_keys(seed: int, step):
  base = jax.random.key(seed)
  return (jax.random.fold_in(jax.random.fold_in(base, MASK_STREAM), step),
          jax.random.fold_in(jax.random.fold_in(base, DROPOUT_STREAM), step))


def create_state(config, model, mesh, image_shape):
  """Returns (state, state_shardings, tx, schedule); state lives in its target sharding."""
  dummy = jnp.zeros((1, *image_shape), jnp.float32)

  def init_params():
    rngs = {"params": jax.random.key(config.seed), "masking": jax.random.key(0)}
    return model.init(rngs, dummy, train=False)["params"]

  abstract_params = jax.eval_shape(init_params)
  tx, schedule = optim.make_optimizer(config, abstract_params)

  def init():
    params = init_params()
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  abstract = jax.eval_shape(init)
  shardings = parallel.state_shardings(mesh, abstract)
  state = jax.jit(init, out_shardings=shardings)()
  return state, shardings, tx, schedule


def make_train_step(config, model, tx, schedule, mesh, state_shardings):
  skip_nonfinite = config.nan_policy == "skip"

  def train_step(state, batch):
    mask_key, drop_key = step_keys(config.seed, state["step"])

    def loss_fn(params):
      loss, _ = model.apply({"params": params}, batch["image"], train=True,
                            rngs={"masking": mask_key, "dropout": drop_key})
      return loss

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
           "opt_state": opt_state}
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:  # keep the old parameters but move on to the next batch
      new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
      new["step"] = state["step"] + 1
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]),
               "finite": finite}
    return new, metrics

  return jax.jit(train_step,
                 in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(state_shardings, parallel.replicated(mesh)),
                 donate_argnums=(0,))


def make_eval_step(config, model, mesh, param_shardings):
  """Sums for the masked-patch MSE over real (valid) examples, fixed masks per batch index."""

  def eval_step(params, batch, index):
    mask_key, _ = step_keys(config.seed + 1, index)
    _, aux = model.apply({"params": params}, batch["image"], train=False,
                         rngs={"masking": mask_key})
    target = aux["target"].astype(jnp.float32)
    if config.model.norm_pix_loss:
      target = (target - target.mean(-1, keepdims=True)) / (target.var(-1, keepdims=True) + 1e-6) ** .5
    per_patch = jnp.mean((aux["pred"].astype(jnp.float32) - target) ** 2, axis=-1)
    zeros = jnp.mean(target**2, axis=-1)  # a model that predicts empty patches
    weight = aux["mask"] * batch["valid"][:, None]
    return {"sq_err": jnp.sum(per_patch * weight), "zero_sq_err": jnp.sum(zeros * weight),
            "count": jnp.sum(weight), "examples": jnp.sum(batch["valid"])}

  return jax.jit(eval_step, in_shardings=(param_shardings, parallel.batch_sharding(mesh), None),
                 out_shardings=parallel.replicated(mesh))


def evaluate(eval_step, params, pipeline, split, config, mesh):
  local = config.batch_size // jax.process_count()
  num_batches, it = pipeline.eval_iter(split, local, config.batch_size)
  sums = {"sq_err": 0.0, "zero_sq_err": 0.0, "count": 0.0, "examples": 0.0}
  for i, batch in enumerate(it):
    out = eval_step(params, parallel.global_batch(batch, mesh), i)
    sums = {k: sums[k] + float(out[k]) for k in sums}
  count = max(sums["count"], 1.0)
  return {f"{split}/masked_mse": sums["sq_err"] / count,
          f"{split}/masked_mse_predict_zeros": sums["zero_sq_err"] / count,
          f"{split}/examples": sums["examples"]}


class Progress:
  """Readable progress lines: step, loss, lr, images/s and ETA.

  The clock starts after the first step, so compile time is not counted as throughput.
  """

  def __init__(self, total_steps, batch_size, start_step):
    self.total, self.batch, self.t0, self.s0 = total_steps, batch_size, None, start_step + 1

  def started(self):
    if self.t0 is None:
      self.t0 = time.time()

  def line(self, step, metrics):
    dt = time.time() - self.t0
    rate = (step - self.s0) / dt if dt > 0 and step > self.s0 else float("nan")
    eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
    return (f"step {step}/{self.total}  loss {metrics['loss']:.5f}  lr {metrics['lr']:.3e}  "
            f"{rate * self.batch:.1f} img/s  ETA {eta / 60:.1f} min")


def check_workdir(workdir, config):
  """Refuses to resume a run whose model or data differ from the one saved there."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  now = json.loads(config.to_json_best_effort())
  for key in ("model", "seed", "batch_size", "stage"):
    if saved.get(key) != now.get(key) and not config.get("overwrite", False):
      raise ValueError(
          f"{workdir} holds a run with a different {key!r} ({saved.get(key)} vs {now.get(key)}); "
          "use another --workdir, or --config.overwrite=True to start over there.")


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) a pretraining run; returns the final metrics."""
  from mae_jax.data import pipeline as pipeline_lib  # tensorflow import kept off module load
  from mae_jax.evaluate import plots

  if not config.data.dir:
    raise ValueError("config.data.dir is empty: pass --config.data.dir=DIR, a directory written "
                     "by `python -m mae_jax.data.convert`")
  if config.batch_size % jax.device_count():
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                     f"{jax.device_count()} devices")
  if config.nan_policy not in ("stop", "skip"):
    raise ValueError(f"nan_policy={config.nan_policy!r}; choose 'stop' or 'skip'")
  os.makedirs(workdir, exist_ok=True)
  check_workdir(workdir, config)

  mesh = parallel.make_mesh(config.mesh)
  pipe = pipeline_lib.Pipeline(config.data.dir, config.data.normalization,
                               jax.process_index(), jax.process_count())
  image_shape = pipe.image_shape
  model = build_model(config, image_shape)
  state, shardings, tx, schedule = create_state(config, model, mesh, image_shape)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
  logging.info("model %s: %d trainable parameters (+%d fixed position-table entries)",
               config.model.variant, n_params, model.num_fixed_params(image_shape))

  mngr = checkpoint.manager(workdir, config.keep_ckpts)
  if config.get("overwrite", False) and mngr.latest_step() is not None:
    raise ValueError(f"--config.overwrite=True but {workdir} still has checkpoints; "
                     "delete them or use another workdir")
  start = 0
  if mngr.latest_step() is not None:
    state = checkpoint.restore(mngr, checkpoint.abstract_like(state, shardings))
    start = int(state["step"])
    logging.info("resumed from step %d", start)
  checkpoint.write_config(workdir, config)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start == 0:
    writer.write_hparams({"variant": config.model.variant, "batch_size": config.batch_size,
                          "mask_ratio": config.model.mask_ratio, "params": n_params})
  train_step = make_train_step(config, model, tx, schedule, mesh, shardings)
  eval_step = make_eval_step(config, model, mesh, shardings["params"])
  local_batch = config.batch_size // jax.process_count()
  batches = pipe.train_iter(config.data.train_split, local_batch, config.seed, start,
                            config.data.shuffle_buffer)

  history_path = os.path.join(workdir, "metrics.jsonl")
  progress = Progress(config.total_steps, config.batch_size, start)
  skipped = 0
  metrics = {}
  for step in range(start + 1, config.total_steps + 1):
    state, metrics = train_step(state, parallel.global_batch(next(batches), mesh))
    if step == start + 1:
      jax.block_until_ready(metrics)
      progress.started()
    if not bool(metrics["finite"]):
      skipped += 1
      if config.nan_policy == "stop":
        mngr.wait_until_finished()
        raise NonFiniteError(
            f"non-finite loss or gradient at step {step} (loss={float(metrics['loss'])}, "
            f"grad_norm={float(metrics['grad_norm'])}); last good checkpoint: step "
            f"{mngr.latest_step()} in {mngr.directory}. Lower the lr, enable "
            "optim.grad_clip_norm, or set nan_policy=skip.")
    if step % config.ckpt_every == 0 or step == config.total_steps:
      checkpoint.save(mngr, step, state)
    if step % config.log_every == 0 or step == config.total_steps:
      scalars = {k: float(v) for k, v in metrics.items() if k != "finite"}
      scalars["skipped_steps"] = skipped
      writer.write_scalars(step, scalars)
      if jax.process_index() == 0:
        logging.info(progress.line(step, scalars))
        print(progress.line(step, scalars), flush=True)
        with open(history_path, "a") as f:
          f.write(json.dumps({"step": step, **scalars}) + "\n")
    if config.eval_every and step % config.eval_every == 0 and step != config.total_steps:
      writer.write_scalars(step, evaluate(eval_step, state["params"], pipe,
                                          config.data.eval_split, config, mesh))

  final = {}
  if config.data.eval_split and config.data.eval_split in pipe.meta["splits"]:
    final = evaluate(eval_step, state["params"], pipe, config.data.eval_split, config, mesh)
    writer.write_scalars(config.total_steps, dict(final))
    if jax.process_index() == 0:
      print(" ".join(f"{k} {v:.6g}" for k, v in final.items()), flush=True)
  if metrics:
    final["train/loss"] = float(metrics["loss"])
  final["skipped_steps"] = skipped
  if config.figures and jax.process_index() == 0:
    plots.loss_curve(history_path, os.path.join(workdir, "loss_curve.png"))
  if config.figures:
    split = config.data.eval_split if config.data.eval_split in pipe.meta["splits"] else \
        config.data.train_split
    plots.reconstructions(model, state["params"], pipe, split, mesh, config,
                          os.path.join(workdir, "reconstruction.png"))
  writer.flush()
  mngr.wait_until_finished()
  mngr.close()
  return final
