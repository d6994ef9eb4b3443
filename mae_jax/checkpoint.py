"""Orbax checkpoints: save every N steps, keep the last K, restore to target shardings.

A checkpoint holds the whole train state {"step", "params", "opt_state"}.
Restores go against an abstract tree (`jax.ShapeDtypeStruct`s carrying the
target shardings), so a run saved on 8 devices restores onto 1 and back.
Orbax writes each step into a temporary directory and renames it when
complete, so an interrupted save is never listed as a step.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp
from absl import logging


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """The trainer decides when to save (every N steps and at the end)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=options)


def abstract_like(tree, shardings):
  """ShapeDtypeStructs with the given shardings (what restore should produce)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


def save(mngr: ocp.CheckpointManager, step: int, state) -> bool:
  return mngr.save(step, args=ocp.args.StandardSave(state), force=True)


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores `step` (default: latest) into the structure and shardings given."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
  logging.info("restoring checkpoint step %d from %s", step, mngr.directory)
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def write_config(workdir: str, config) -> None:
  """Stores the run's config next to its checkpoints (JSON, process 0 only)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
