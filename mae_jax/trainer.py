"""The one training loop for every stage: state, sharded step, eval, checkpoints, logs.

Stages differ only in config: `model.name` picks the model (MAE family,
encoder classifier, ResNet), `task.name` the loss and metrics (mae, classify,
regress), `model_init` which checkpoint's parameters are loaded into which
sub-tree, and `optim.frozen` which parameters never change.

State is a dict {"step", "params", "opt_state", "model_state"} (model_state:
BatchNorm statistics, empty for the ViT MAE) created by `jax.jit(init,
out_shardings=...)` directly in its target sharding; the step is
`jax.jit(..., donate_argnums=0)`. Randomness derives from (seed, step) only:
masking noise for step k is `fold_in(key(seed), k)` and the data order is a
function of (seed, step) (data/pipeline.py), so a resumed run sees the same
batches and masks as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers

from mae_jax import checkpoint, optim, parallel, tasks
from mae_jax.models import registry

MASK_STREAM, DROPOUT_STREAM = 1, 2


class NonFiniteError(RuntimeError):
  pass


class PreemptionWatcher:
  """Turns SIGTERM (what SLURM and TPU maintenance send) into a flag the loop checks.

  The running step finishes, a checkpoint is written and the run exits cleanly.
  With several processes the decision is JAX's preemption sync point, so every
  host stops at the same step.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def should_stop(self, step) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # preemption service not enabled in this jax.distributed set-up
        return False
    return self.requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def build_model(config, image_shape):
  return registry.build_model(config, image_shape)


def step_keys(seed: int, step):
  base = jax.random.key(seed)
  return (jax.random.fold_in(jax.random.fold_in(base, MASK_STREAM), step),
          jax.random.fold_in(jax.random.fold_in(base, DROPOUT_STREAM), step))


def _apply(model, params, model_state, images, train, mask_key, drop_key):
  """Forward pass of any stage's model; returns (output, new model_state)."""
  variables = {"params": params, **model_state}
  rngs = {"masking": mask_key, "dropout": drop_key}
  if train and model_state:
    return model.apply(variables, images, train=True, rngs=rngs, mutable=list(model_state))
  return model.apply(variables, images, train=train, rngs=rngs), model_state


def load_pretrained(config, params):
  """Copies sub-trees of another run's parameters into `params` (config.model_init).

  `model_load` lists "src:dst" pairs of "/"-joined sub-tree paths, e.g.
  "encoder:backbone/encoder" puts a pretrain run's encoder under the classifier.
  Every destination leaf must exist in the source with the same shape.
  """
  from flax import traverse_util
  src_dir = config.model_init
  restored, step = checkpoint.read_arrays(src_dir, item="params")
  restored = restored["params"]
  src_flat = traverse_util.flatten_dict(restored, sep="/")
  dst_flat = traverse_util.flatten_dict(params, sep="/")
  loaded = 0
  for pair in filter(None, (p.strip() for p in config.model_load.split(","))):
    src, dst = pair.split(":") if ":" in pair else (pair, pair)
    targets = {k: v for k, v in dst_flat.items() if k.startswith(dst + "/")}
    if not targets:
      raise ValueError(f"model_load {pair!r}: this model has no parameters under {dst!r}")
    for k, v in targets.items():
      sk = src + k[len(dst):]
      if sk not in src_flat:
        raise ValueError(f"model_init {src_dir} (step {step}) has no parameter {sk!r} for {k!r}")
      if tuple(src_flat[sk].shape) != tuple(v.shape):
        raise ValueError(f"model_init {src_dir}: {sk!r} has shape {tuple(src_flat[sk].shape)} "
                         f"but this model's {k!r} needs {tuple(v.shape)} (a different variant, "
                         "patch or channel count?)")
      dst_flat[k] = jnp.asarray(src_flat[sk], v.dtype)
      loaded += 1
  logging.info("loaded %d arrays from %s step %d", loaded, src_dir, step)
  return traverse_util.unflatten_dict(dst_flat, sep="/"), step


def create_state(config, model, mesh, image_shape):
  """Returns (state, state_shardings, tx, schedule); state lives in its target sharding."""
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

  abstract = jax.eval_shape(init)
  shardings = parallel.state_shardings(mesh, abstract)
  if config.get("model_init", ""):
    params, _ = load_pretrained(config, jax.device_get(jax.jit(lambda: init_variables()["params"])()))
    params = jax.device_put(params, shardings["params"])
    state = jax.jit(init, in_shardings=(shardings["params"],), out_shardings=shardings)(params)
  else:
    state = jax.jit(init, out_shardings=shardings)()
  return state, shardings, tx, schedule


def make_train_step(config, model, tx, schedule, mesh, state_shardings, task=None):
  task = task or tasks.Task(config, {"splits": {}})
  skip_nonfinite = config.nan_policy == "skip"
  frozen = optim.frozen_mask(state_shardings["params"],
                             config.optim.get("frozen", ""))

  def train_step(state, batch):
    mask_key, drop_key = step_keys(config.seed, state["step"])

    def loss_fn(params):
      # frozen parameters get no gradient at all, so XLA drops their backward pass
      # (a linear probe then costs a forward through the encoder only)
      params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
      out, model_state = _apply(model, params, state["model_state"], batch["image"], True,
                                mask_key, drop_key)
      return task.loss(out, batch), model_state

    (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
           "opt_state": opt_state, "model_state": model_state}
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:  # keep the old state but move on to the next batch
      new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
      new["step"] = state["step"] + 1
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]),
               "finite": finite}
    return new, metrics

  return jax.jit(train_step,
                 in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(state_shardings, parallel.replicated(mesh)),
                 donate_argnums=(0,))


def make_eval_step(config, model, mesh, state_shardings, task):
  """Per-batch eval outputs; MAE masks are fixed per batch index (seed + 1 stream)."""

  def eval_step(params, model_state, batch, index):
    mask_key, drop_key = step_keys(config.seed + 1, index)
    out, _ = _apply(model, params, model_state, batch["image"], False, mask_key, drop_key)
    return task.eval_outputs(out, batch)

  return jax.jit(eval_step, in_shardings=(state_shardings["params"], state_shardings["model_state"],
                                          parallel.batch_sharding(mesh), None),
                 out_shardings=parallel.replicated(mesh))


def evaluate(eval_step, state, pipeline, split, config, mesh, task, save_scores=""):
  """Summary over a whole split; classify: optionally saves labels and scores (npz)."""
  local = config.batch_size // jax.process_count()
  _, it = pipeline.eval_iter(split, local, config.batch_size)
  outputs = [parallel.to_host(eval_step(state["params"], state["model_state"],
                                      parallel.global_batch(batch, mesh), i))
             for i, batch in enumerate(it)]
  bad = sorted({k for o in outputs for k, v in o.items()
                 if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()})
  if bad:  # the parameters diverged (e.g. in the last update, after the step's own check)
    raise NonFiniteError(f"non-finite model outputs ({', '.join(bad)}) on the {split!r} split: "
                         "the parameters diverged. Lower the lr or enable optim.grad_clip_norm.")
  if save_scores and task.name == "classify" and jax.process_index() == 0:
    keep = np.concatenate([o["valid"] for o in outputs]) > 0
    np.savez(save_scores, label=np.concatenate([o["label"] for o in outputs])[keep],
             score=np.concatenate([o["score"] for o in outputs])[keep])
  return task.summarize(outputs, split)


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
  from mae_jax import config_util
  defaults = json.loads(config_util.base_config().to_json_best_effort())
  for key in ("model", "seed", "batch_size", "stage"):
    if isinstance(saved.get(key), dict) and isinstance(now.get(key), dict):
      # a field added to the config after the saved run, left at its default, changes nothing
      now[key] = {k: v for k, v in now[key].items()
                  if k in saved[key] or v != defaults.get(key, {}).get(k, v)}
    if saved.get(key) != now.get(key) and not config.get("overwrite", False):
      raise ValueError(
          f"{workdir} holds a run with a different {key!r} ({saved.get(key)} vs {now.get(key)}); "
          "use another --workdir, or --config.overwrite=True to start over there.")


def _save_best(workdir, state, step, summary):
  """Keeps the validation-selected parameters (and BN statistics) in WORKDIR/best."""
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "best")),
                               options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
  mngr.save(step, args=ocp.args.StandardSave({"params": state["params"],
                                              "model_state": state["model_state"]}), force=True)
  mngr.wait_until_finished()
  mngr.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "best.json"), "w") as f:
      json.dump({"step": step, **summary}, f, indent=1)


def _restore_best(workdir, state, shardings):
  import orbax.checkpoint as ocp
  d = os.path.abspath(os.path.join(workdir, "best"))
  if not os.path.isdir(d):
    return state, None
  mngr = ocp.CheckpointManager(d)
  step = mngr.latest_step()
  if step is None:
    return state, None
  target = {"params": state["params"], "model_state": state["model_state"]}
  abstract = checkpoint.abstract_like(target, {"params": shardings["params"],
                                               "model_state": shardings["model_state"]})
  best = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  mngr.close()
  return {**state, **best}, step


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) one stage; returns the final metrics (also in final_metrics.json).

  With `eval_every` > 0 the validation split is evaluated during training and
  the best state is kept; at the end the test split (`data.test_split`) is
  evaluated once, with the validation-selected state.
  """
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
                               jax.process_index(), jax.process_count(), config.data.host_split)
  task = tasks.Task(config, pipe.meta)
  if task.name == "regress":
    task.set_target_stats(*tasks.host_targets_stats(pipe, config.data.train_split,
                                                    task.target_idx))
  image_shape = pipe.image_shape
  model = build_model(config, image_shape)
  state, shardings, tx, schedule = create_state(config, model, mesh, image_shape)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
  logging.info("model %s/%s: %d trainable parameters", config.model.name, config.model.variant,
               n_params)

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
    writer.write_hparams({"model": config.model.name, "variant": config.model.variant,
                          "task": task.name, "batch_size": config.batch_size, "params": n_params})
  train_step = make_train_step(config, model, tx, schedule, mesh, shardings, task)
  eval_step = make_eval_step(config, model, mesh, shardings, task)
  local_batch = config.batch_size // jax.process_count()
  batches = pipe.train_iter(config.data.train_split, local_batch, config.seed, start,
                            config.data.shuffle_buffer)
  val_split = config.data.eval_split if config.data.eval_split in pipe.meta["splits"] else ""
  best_metric = -np.inf
  if os.path.exists(os.path.join(workdir, "best.json")):
    with open(os.path.join(workdir, "best.json")) as f:
      best = json.load(f)
    best_metric = task.selection_metric(best, val_split) if val_split else -np.inf

  def validate(step):
    nonlocal best_metric
    summary = evaluate(eval_step, state, pipe, val_split, config, mesh, task)
    writer.write_scalars(step, dict(summary))
    if jax.process_index() == 0:
      print(" ".join(f"{k} {v:.6g}" for k, v in summary.items()), flush=True)
    value = task.selection_metric(summary, val_split)
    if value > best_metric:
      best_metric = value
      # the value is kept so that callers comparing runs (protocol --select) use this rule
      _save_best(workdir, state, step, {**summary, "selection_metric": float(value)})
    return summary

  history_path = os.path.join(workdir, "metrics.jsonl")
  progress = Progress(config.total_steps, config.batch_size, start)
  skipped = 0
  metrics = {}
  watcher = PreemptionWatcher()
  preempted = False
  for step in range(start + 1, config.total_steps + 1):
    state, metrics = train_step(state, parallel.global_batch(next(batches), mesh))
    if step == start + 1:
      jax.block_until_ready(metrics)
      progress.started()
    metrics = parallel.to_host(metrics)
    if not bool(metrics["finite"]):
      skipped += 1
      if config.nan_policy == "stop":
        mngr.wait_until_finished()
        raise NonFiniteError(
            f"non-finite loss or gradient at step {step} (loss={float(metrics['loss'])}, "
            f"grad_norm={float(metrics['grad_norm'])}); last good checkpoint: step "
            f"{mngr.latest_step()} in {mngr.directory}. Lower the lr, enable "
            "optim.grad_clip_norm, or set nan_policy=skip.")
    preempted = watcher.should_stop(step)
    if step % config.ckpt_every == 0 or step == config.total_steps or preempted:
      checkpoint.save(mngr, step, state)
    if step % config.log_every == 0 or step == config.total_steps:
      scalars = {k: float(v) for k, v in metrics.items() if k != "finite"}
      scalars["skipped_steps"] = skipped
      writer.write_scalars(step, scalars)
      if jax.process_index() == 0:
        print(progress.line(step, scalars), flush=True)
        with open(history_path, "a") as f:
          f.write(json.dumps({"step": step, **scalars}) + "\n")
    if preempted:
      break
    if val_split and config.eval_every and step % config.eval_every == 0 \
        and step != config.total_steps:
      validate(step)
  watcher.close()
  if preempted:
    mngr.wait_until_finished()
    writer.flush()
    mngr.close()
    if jax.process_index() == 0:
      print(f"preempted: SIGTERM received; checkpoint written at step {step} in "
            f"{mngr.directory}; rerun the same command to resume", flush=True)
    return {"preempted_at": step, "skipped_steps": skipped}

  final = {"last_step": int(state["step"]), "skipped_steps": skipped}
  if metrics:
    final["train/loss"] = float(metrics["loss"])
  if val_split:
    final.update(validate(int(state["step"])))
  selected, best_step = _restore_best(workdir, state, shardings) if val_split else (state, None)
  final["selected_step"] = best_step if best_step is not None else int(state["step"])
  final["selected_by"] = f"{val_split} split" if best_step is not None else "last step"
  test_split = config.data.get("test_split", "")
  if test_split and test_split in pipe.meta["splits"]:
    summary = evaluate(eval_step, selected, pipe, test_split, config, mesh, task,
                       save_scores=os.path.join(workdir, f"{test_split}_scores.npz"))
    writer.write_scalars(config.total_steps, dict(summary))
    final.update(summary)
    if jax.process_index() == 0:
      print(" ".join(f"{k} {v:.6g}" for k, v in summary.items()), flush=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump(final, f, indent=1, sort_keys=True)
    if config.figures and os.path.exists(history_path):
      plots.loss_curve(history_path, os.path.join(workdir, "loss_curve.png"))
  if config.figures and task.name == "mae":
    split = val_split or config.data.train_split
    plots.reconstructions(model, selected["params"], pipe, split, mesh, config,
                          os.path.join(workdir, "reconstruction.png"))
  writer.flush()
  mngr.wait_until_finished()
  mngr.close()
  return final
