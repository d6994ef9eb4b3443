"""The one training loop for every stage: steps, eval cadence, best checkpoint, test once.

Stages differ only in config: `model.name` picks the model (MAE family, encoder
classifier, ResNet), `task.name` the loss and metrics (mae, classify, regress),
`model_init` which checkpoint's parameters are loaded into which sub-tree, and
`optim.frozen` which parameters never change. The builders (model, sharded state,
jitted steps, evaluation) are in `experiment.py`; this file is the loop alone.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import jax
import numpy as np
from absl import logging
from clu import metric_writers

from mae_jax import checkpoint, config_util, errors, experiment, parallel, tasks, workdir_lock


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
  saved = checkpoint.read_json(os.path.join(workdir, "config.json"))
  if saved is None:
    return
  now = json.loads(config.to_json_best_effort())
  defaults = json.loads(config_util.base_config().to_json_best_effort())
  for key in ("model", "seed", "batch_size", "stage"):
    if isinstance(saved.get(key), dict) and isinstance(now.get(key), dict):
      # a field added to the config after the saved run, left at its default, changes nothing
      now[key] = {k: v for k, v in now[key].items()
                  if k in saved[key] or v != defaults.get(key, {}).get(k, v)}
    if saved.get(key) != now.get(key) and not config.get("overwrite", False):
      raise errors.UsageError(
          f"{workdir} holds a run with a different {key!r} ({saved.get(key)} vs {now.get(key)}); "
          "use another --workdir, or --config.overwrite=True to start over there.")


def check_config(config, workdir):
  """Errors in the config, in one line each, before anything is built."""
  if not config.data.dir:
    raise errors.UsageError(
        "config.data.dir is empty: pass --config.data.dir=DIR, a directory written "
                     "by `python -m mae_jax.data.convert`")
  if config.batch_size % jax.device_count():
    raise errors.UsageError(f"batch_size {config.batch_size} is not divisible by the "
                     f"{jax.device_count()} devices")
  if config.nan_policy not in ("stop", "skip"):
    raise errors.UsageError(f"nan_policy={config.nan_policy!r}; choose 'stop' or 'skip'")
  if config.warmup_steps >= config.total_steps > 1:
    warmup = max(1, config.total_steps // 10)
    logging.warning("warmup_steps=%d is not shorter than total_steps=%d: the lr would never "
                    "reach its peak; using warmup_steps=%d", config.warmup_steps,
                    config.total_steps, warmup)
    print(f"warning: warmup_steps={config.warmup_steps} >= total_steps={config.total_steps}; "
          f"clipped to {warmup}", file=sys.stderr)
    config.warmup_steps = warmup
  os.makedirs(workdir, exist_ok=True)


def print0(line: str):
  """A progress line from process 0, written in one call so that log lines (stderr) never
  land in the middle of it when both streams go to one file."""
  if jax.process_index() == 0:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


HISTORY = "metrics.jsonl"  # one JSON row per logged train step, validation and test summary


def read_history(workdir_or_file, train: bool = True) -> list[dict]:
  """Rows of a run's metrics.jsonl: the training rows (with "loss"), or the eval summaries."""
  path = workdir_or_file
  if os.path.isdir(path):
    path = os.path.join(path, HISTORY)
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if ("loss" in r) == train]


def append_jsonl(path, row):
  """Process 0 appends one JSON line; a failed write (a full disk) is rolled back, so that
  the file never ends in half a line that a restart would fail to read."""
  if jax.process_index() != 0:
    return
  data = (json.dumps(checkpoint.json_safe(row), allow_nan=False) + "\n").encode()
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    size = os.fstat(fd).st_size
    try:
      while data:
        data = data[os.write(fd, data):]
    except OSError:
      os.ftruncate(fd, size)
      raise
  finally:
    os.close(fd)


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) one stage; returns the final metrics (also in final_metrics.json).

  With `eval_every` > 0 the validation split is evaluated during training and
  the best state is kept; at the end the test split (`data.test_split`) is
  evaluated once, with the validation-selected state.

  One run at a time writes to a workdir (`workdir_lock`; another live run's lock is a
  WorkdirLockedError). A record that cannot be read (CorruptDataError) or a full disk,
  quota or read-only filesystem (DiskFullError) ends the run in one line naming the last
  good checkpoint; saves that never finished are removed (a restart ignores them anyway).
  """
  try:
    check_config(config, workdir)
    with workdir_lock.WorkdirLock(workdir, enabled=jax.process_index() == 0) as lock:
      check_workdir(workdir, config)
      mngr = checkpoint.manager(workdir, config.keep_ckpts)
      try:
        return _run(config, workdir, mngr, lock)
      except BaseException:
        checkpoint.settle(mngr, workdir)
        raise
  except errors.CorruptDataError as e:
    raise errors.CorruptDataError(f"{e}; {_last_good(workdir)}") from e
  except Exception as e:
    full = errors.disk_full_error(e, os.path.abspath(workdir), _last_good(workdir))
    if full is None:
      raise
    raise full from e


def _last_good(workdir) -> str:
  step = checkpoint.last_good_step(workdir)
  return f"last good checkpoint: {'none' if step is None else f'step {step}'}"


def _run(config, workdir, mngr, lock) -> dict:
  from mae_jax.evaluate import plots

  # ---- set-up: data, task, model, sharded state, resume
  mesh = parallel.make_mesh(config.mesh)
  pipe = experiment.make_pipeline(config)
  task = tasks.build(config, pipe)
  model = experiment.build_model(config, pipe.image_shape)
  setup = experiment.create_state(config, model, mesh, pipe.image_shape)
  state = setup.state
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
  logging.info("model %s/%s: %d parameters", config.model.name, config.model.variant, n_params)

  if config.get("overwrite", False) and mngr.latest_step() is not None:
    raise errors.UsageError(f"--config.overwrite=True but {workdir} still has checkpoints; "
                     "delete them or use another workdir")
  start = 0
  if mngr.latest_step() is not None:
    state = checkpoint.restore(mngr, checkpoint.abstract_like(state, setup.shardings))
    start = int(state["step"])
    logging.info("resumed from step %d", start)
  checkpoint.write_config(workdir, config)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start == 0:
    writer.write_hparams({"model": config.model.name, "variant": config.model.variant,
                          "task": task.name, "batch_size": config.batch_size, "params": n_params})
  train_step = experiment.make_train_step(config, model, task, setup, mesh)
  eval_step = experiment.make_eval_step(config, model, task, setup.shardings, mesh)
  subset = None
  if config.data.get("train_examples", 0):
    subset = pipe.labelled_subset(config.data.train_split, config.data.train_examples,
                                  config.seed)
  batches = pipe.train_iter(config.data.train_split, config.batch_size // jax.process_count(),
                            config.seed, start, config.data.shuffle_buffer, subset=subset)
  val_split = config.data.eval_split if config.data.eval_split in pipe.meta["splits"] else ""
  history = os.path.join(workdir, HISTORY)
  best = checkpoint.read_json(os.path.join(workdir, checkpoint.BEST_JSON))
  best_metric = task.selection_metric(best, val_split) if (best and val_split) else -np.inf

  def validate(step):
    nonlocal best_metric
    summary = experiment.evaluate(eval_step, state, pipe, val_split, config, mesh, task)
    writer.write_scalars(step, dict(summary))
    append_jsonl(history, {"step": step, **summary})
    print0(" ".join(f"{k} {v:.6g}" for k, v in summary.items()))
    value = task.selection_metric(summary, val_split)
    if value > best_metric:
      best_metric = value
      # the value is kept so that callers comparing runs (protocol --select) use this rule
      checkpoint.save_best(workdir, state, step, {**summary, "selection_metric": float(value)})
    return summary

  # ---- the loop
  t_start = time.time()
  progress = Progress(config.total_steps, config.batch_size, start)
  watcher = PreemptionWatcher()
  skipped, metrics, preempted, step = 0, {}, False, start
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
        raise errors.NonFiniteError(
            f"non-finite loss or gradient at step {step} (loss={float(metrics['loss'])}, "
            f"grad_norm={float(metrics['grad_norm'])}); last good checkpoint: step "
            f"{mngr.latest_step()} in {mngr.directory}. Lower the lr, enable "
            "optim.grad_clip_norm, or set nan_policy=skip.")
    preempted = watcher.should_stop(step)
    if step % config.ckpt_every == 0 or step == config.total_steps or preempted:
      lock.check()  # never write over a run that took this workdir over
      checkpoint.save(mngr, step, state)
    if step % config.log_every == 0 or step == config.total_steps:
      scalars = {k: float(v) for k, v in metrics.items() if k != "finite"}
      scalars["skipped_steps"] = skipped
      if pipe.on_corrupt == "skip":
        scalars["unreadable_records"] = pipe.unreadable.get(config.data.train_split, 0)
      writer.write_scalars(step, scalars)
      print0(progress.line(step, scalars))
      append_jsonl(history, {"step": step, **scalars})
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
    print0(f"preempted: SIGTERM received; checkpoint written at step {step} in "
           f"{mngr.directory}; rerun the same command to resume")
    return {"preempted_at": step, "skipped_steps": skipped}

  # ---- the end: last validation, best state, test split once, figures
  previous = checkpoint.read_json(os.path.join(workdir, "final_metrics.json"), {}) or {}
  final = {"last_step": int(state["step"]), "skipped_steps": skipped,
           # training time of this run, summed over resumes (the protocol's runtime table)
           "train_seconds": time.time() - t_start + (previous.get("train_seconds") or 0.0)}
  if metrics:
    final["train/loss"] = float(metrics["loss"])
  if val_split:
    final.update(validate(int(state["step"])))
  selected, best_step = (checkpoint.restore_best(workdir, state, setup.shardings) if val_split
                         else (state, None))
  final["selected_step"] = best_step if best_step is not None else int(state["step"])
  final["selected_by"] = f"{val_split} split" if best_step is not None else "last step"
  test_split = config.data.get("test_split", "")
  if test_split and test_split in pipe.meta["splits"]:
    summary = experiment.evaluate(eval_step, selected, pipe, test_split, config, mesh, task,
                                  save_scores=os.path.join(workdir, f"{test_split}_scores.npz"))
    writer.write_scalars(config.total_steps, dict(summary))
    append_jsonl(history, {"step": final["selected_step"], **summary})
    final.update(summary)
    print0(" ".join(f"{k} {v:.6g}" for k, v in summary.items()))
  if pipe.on_corrupt == "skip":
    final.update({f"{s}/unreadable_records": n for s, n in pipe.unreadable.items()})
  checkpoint.write_json(os.path.join(workdir, "final_metrics.json"), final)
  if config.figures and jax.process_index() == 0 and os.path.exists(history):
    plots.loss_curve(history, os.path.join(workdir, "loss_curve.png"))
  if config.figures and task.name == "mae":
    plots.reconstructions(model, selected["params"], pipe, val_split or config.data.train_split,
                          mesh, config, os.path.join(workdir, "reconstruction.png"))
  missing = [s for s in (config.data.eval_split, test_split) if s and s not in pipe.meta["splits"]]
  if missing:  # say it where the run ends, not only in the logs
    print0(f"note: {config.data.dir} has no {' or '.join(map(repr, missing))} split: "
           + ("the checkpoint is the last step, not selected on validation; "
              if config.data.eval_split in missing else "")
           + ("no held-out test numbers" if test_split in missing else "test numbers above"))
  writer.flush()
  mngr.wait_until_finished()
  mngr.close()
  return final
