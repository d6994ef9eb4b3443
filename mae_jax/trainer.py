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
import sys
import time

import jax
import numpy as np
from absl import logging
from clu import metric_writers

from mae_jax import (checkpoint, config_util, errors, experiment, parallel, preemption, tasks,
                     workdir_lock)
from mae_jax.progress import Progress, print0


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
  # the MAE target decides what the decoder predicts (and its width): never mixed in one run
  target = (saved.get("task") or {}).get("target", "pixels")
  if target != config.task.get("target", "pixels") and not config.get("overwrite", False):
    raise errors.UsageError(
        f"{workdir} holds a run with a different 'task.target' ({target} vs "
        f"{config.task.target}); use another --workdir, or --config.overwrite=True to start "
        "over there.")


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
    # SIGTERM / Ctrl-C only set a flag from here on, also during compilation
    with preemption.PreemptionWatcher() as watcher, \
        workdir_lock.WorkdirLock(workdir, enabled=jax.process_index() == 0) as lock:
      check_workdir(workdir, config)
      mngr = checkpoint.manager(workdir, config.keep_ckpts)
      try:
        return _run(config, workdir, mngr, lock, watcher)
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


def _run(config, workdir, mngr, lock, watcher) -> dict:
  from mae_jax.evaluate import plots

  # ---- set-up: data, task, model, sharded state, resume
  mesh = parallel.make_mesh(config.mesh)
  pipe = experiment.make_pipeline(config)
  task = tasks.build(config, pipe, workdir)  # fitted targets (a codebook) live in workdir
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
  history = os.path.join(workdir, checkpoint.HISTORY)
  best = checkpoint.read_json(os.path.join(workdir, checkpoint.BEST_JSON))
  best_metric = task.selection_metric(best, val_split) if (best and val_split) else -np.inf

  def validate(step):
    nonlocal best_metric
    summary = experiment.evaluate(eval_step, state, pipe, val_split, config, mesh, task)
    writer.write_scalars(step, dict(summary))
    checkpoint.append_jsonl(history, {"step": step, **summary})
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
  skipped, metrics, preempted, step = 0, {}, False, start
  for step in range(start + 1, config.total_steps + 1):
    state, metrics = train_step(state, parallel.global_batch(next(batches), mesh))
    metrics = parallel.to_host(metrics)
    progress.tick(step)
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
      checkpoint.append_jsonl(history, {"step": step, **scalars})
    if preempted:
      break
    if val_split and config.eval_every and step % config.eval_every == 0 \
        and step != config.total_steps:
      validate(step)
  watcher.close()  # from here on Ctrl-C interrupts (main.py: one line, exit 130)
  if preempted:
    mngr.wait_until_finished()
    writer.flush()
    mngr.close()
    print0(f"preempted: {watcher.signal_name} received; checkpoint written at step {step} in "
           f"{mngr.directory}; rerun the same command to resume")
    return {"preempted_at": step, "skipped_steps": skipped, "signal": watcher.signal_name}

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
  test_outputs = None
  if test_split and test_split in pipe.meta["splits"]:
    summary, test_outputs = experiment.evaluate(eval_step, selected, pipe, test_split, config,
                                                mesh, task, return_outputs=True)
    writer.write_scalars(config.total_steps, dict(summary))
    checkpoint.append_jsonl(history, {"step": final["selected_step"], **summary})
    final.update(summary)
    print0(" ".join(f"{k} {v:.6g}" for k, v in summary.items()))
  if pipe.on_corrupt == "skip":
    final.update({f"{s}/unreadable_records": n for s, n in pipe.unreadable.items()})
  checkpoint.write_json(os.path.join(workdir, "final_metrics.json"), final)
  if config.figures and jax.process_index() == 0 and os.path.exists(history):
    plots.loss_curve(history, os.path.join(workdir, "loss_curve.png"))
  task.artefacts(workdir, tasks.RunOutputs(
      config=config, model=model, params=selected["params"], pipe=pipe, mesh=mesh,
      split=val_split or config.data.train_split, test_split=test_split,
      test_outputs=test_outputs))
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
