"""Orbax checkpoints: save every N steps, keep the last K, restore to target shardings.

A checkpoint holds the whole train state {"step", "params", "opt_state"}.
Restores go against an abstract tree (`jax.ShapeDtypeStruct`s carrying the
target shardings), so a run saved on 8 devices restores onto 1 and back.
Orbax writes each step into a temporary directory and renames it when
complete, so an interrupted save is never listed as a step. Once a save is
complete, process 0 writes the sha256 of every file of the step directory
(`MANIFEST`); a restore checks it, and a step whose files differ (or that
TensorStore cannot decode) is set aside as `STEP.corrupt-N` with one line, and
the run resumes from the newest intact step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from mae_jax.errors import CorruptDataError, MissingPathError, UsageError


TMP_MARKER = ".orbax-checkpoint-tmp"


def interrupted_saves(workdir: str) -> list[str]:
  """Step directories whose save never finished (Orbax renames them only when complete)."""
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(n for n in os.listdir(d) if TMP_MARKER in n)


def last_good_step(workdir: str) -> int | None:
  """The newest step whose save completed (read from disk, whatever a manager believes)."""
  d = os.path.join(workdir, "checkpoints")
  return max((int(n) for n in os.listdir(d) if n.isdigit()), default=None) if os.path.isdir(d) \
      else None


def settle(mngr: ocp.CheckpointManager, workdir: str) -> None:
  """After a failed run: waits for the saves in flight (a failed save's error is the one being
  raised) and removes the saves that never finished, which only take space (a restart
  ignores them)."""
  with contextlib.suppress(Exception):
    mngr.wait_until_finished()
  with contextlib.suppress(Exception):
    mngr.close()
  if jax.process_index() == 0:
    for name in interrupted_saves(workdir):
      shutil.rmtree(os.path.join(workdir, "checkpoints", name), ignore_errors=True)


MANIFEST = "mae_jax_sha256.json"  # in a step directory: {relative path: sha256} of its files
_CORRUPT = ".corrupt-"


def _digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _files(step_dir: str) -> dict[str, str]:
  """{relative path: sha256} of every file under a step directory but the manifest."""
  out = {}
  for root, dirs, names in os.walk(step_dir):
    dirs.sort()
    for n in sorted(names):
      rel = os.path.relpath(os.path.join(root, n), step_dir)
      if rel != MANIFEST:
        out[rel] = _digest(os.path.join(root, n))
  return out


def write_manifests(directory: str) -> None:
  """Process 0 writes the manifest of each completed step directory that has none (Orbax
  renames a step directory only once every host's save is complete)."""
  if jax.process_index() != 0 or not os.path.isdir(directory):
    return
  for n in sorted(os.listdir(directory)):
    step_dir = os.path.join(directory, n)
    if n.isdigit() and not os.path.exists(os.path.join(step_dir, MANIFEST)):
      try:
        _write_atomic(os.path.join(step_dir, MANIFEST), json.dumps(_files(step_dir), indent=0))
      except FileNotFoundError:  # removed meanwhile (max_to_keep)
        pass


def check_step(directory: str, step: int) -> str | None:
  """Why step `step` is corrupted ('sha256 mismatch in FILE', 'FILE missing'), or None when its
  files match its manifest (or it has none: a save from before manifests, or one killed
  before its manifest was written; the restore then still catches undecodable data)."""
  step_dir = os.path.join(directory, str(step))
  manifest = read_json(os.path.join(step_dir, MANIFEST))
  if manifest is None:
    return None
  for rel, want in sorted(manifest.items()):
    path = os.path.join(step_dir, rel)
    if not os.path.exists(path):
      return f"{rel} missing"
    if _digest(path) != want:
      return f"sha256 mismatch in {rel}"
  return None


def set_aside(directory: str, step: int, why: str) -> str:
  """Renames a corrupted step directory out of Orbax's sight (its data is kept); one line."""
  src = os.path.join(directory, str(step))
  k = 0
  while os.path.exists(f"{src}{_CORRUPT}{k}"):
    k += 1
  dst = f"{src}{_CORRUPT}{k}"
  if jax.process_index() == 0:
    os.rename(src, dst)
  msg = f"warning: checkpoint step {step} in {directory} is corrupted ({why}); set aside as {dst}"
  logging.warning(msg)
  print(msg, flush=True)
  return dst


def _undecodable(e: BaseException) -> bool:
  """TensorStore's (or zarr's) error for bytes that do not decode."""
  text = str(e).lower()
  return any(t in text for t in ("corrupt", "data_loss", "decompress", "checksum",
                                 "error reading", "error decoding", "truncated"))


class _Manager(ocp.CheckpointManager):
  """Writes the manifests of completed saves whenever the saves in flight are waited for."""

  def wait_until_finished(self):
    super().wait_until_finished()
    write_manifests(os.fspath(self.directory))


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """The trainer decides when to save (every N steps and at the end).

  Interrupted saves are never listed as steps; they are reported and removed.
  """
  for name in interrupted_saves(workdir):
    logging.warning("ignoring interrupted checkpoint %s (its save never finished)", name)
    if jax.process_index() == 0:
      print(f"warning: ignoring interrupted checkpoint {name} in {workdir}/checkpoints", flush=True)
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         cleanup_tmp_directories=True)
  return _Manager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options)


def abstract_like(tree, shardings):
  """ShapeDtypeStructs with the given shardings (what restore should produce)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


def save(mngr: ocp.CheckpointManager, step: int, state) -> bool:
  if isinstance(mngr, _Manager):  # the previous save's manifest (Orbax waits for it anyway)
    mngr.wait_until_finished()
  return mngr.save(step, args=ocp.args.StandardSave(state), force=True)


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores `step` (default: the newest intact one) into the structure and shardings given.

  Without `step`, a step whose files differ from its manifest or whose data does not decode
  is set aside (`set_aside`, one line) and the next older one tried; none intact is a
  one-line CorruptDataError.
  """
  directory = os.fspath(mngr.directory)
  if step is not None:
    return _restore_step(mngr, abstract_state, step)
  bad = []
  for step in sorted(mngr.all_steps(), reverse=True):
    why = check_step(directory, step)
    if why is None:
      try:
        return _restore_step(mngr, abstract_state, step)
      except CorruptDataError as e:
        why = str(e.__cause__ or e).splitlines()[0][:200]
    bad.append(step)
    set_aside(directory, step, why)
    mngr.reload()
  if bad:
    raise CorruptDataError(f"no intact checkpoint in {directory}: steps {bad} are corrupted "
                           f"(set aside as STEP{_CORRUPT}N); start a new run or restore a copy")
  raise MissingPathError(f"no checkpoint in {directory}")


def _restore_step(mngr, abstract_state, step: int):
  logging.info("restoring checkpoint step %d from %s", step, mngr.directory)
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except (ValueError, KeyError, TypeError, RuntimeError, OSError) as e:
    if _undecodable(e):
      raise CorruptDataError(f"checkpoint step {step} in {mngr.directory} does not decode: "
                             f"{str(e).splitlines()[0][:200]}") from e
    if isinstance(e, (RuntimeError, OSError)):
      raise
    raise UsageError(
        f"checkpoint step {step} in {mngr.directory} does not fit this model/optimizer "
        f"(a checkpoint from a different model?): {str(e).splitlines()[0][:300]}") from e


def checkpoint_dir(path: str) -> str:
  """A run's workdir or its checkpoints/ directory -> the checkpoints/ directory."""
  path = os.path.abspath(path)
  return path if os.path.basename(path) == "checkpoints" else os.path.join(path, "checkpoints")


def nearby_hint(path: str, depth: int = 3, limit: int = 5) -> str:
  """'; checkpoints were found in: A, B' for run directories near `path` (a typo or a
  protocol layout such as ROOT/seed0/pretrain), or '' if there are none."""
  path = os.path.abspath(path)
  base = path
  while base and not os.path.isdir(base):
    base = os.path.dirname(base)
  base = os.path.dirname(base) if base == path else base
  found = []
  for root, dirs, _ in os.walk(base):
    if root[len(base):].count(os.sep) >= depth:
      dirs[:] = []
      continue
    if os.path.basename(root) == "checkpoints" and any(d.isdigit() for d in dirs):
      found.append(os.path.dirname(root))
      dirs[:] = []
    dirs.sort()
  found = [f for f in found if f != path][:limit]
  return f"; checkpoints were found in: {', '.join(found)}" if found else ""


def read_arrays(path: str, step: int | None = None, item: dict | str | None = None):
  """Reads a checkpoint (or a sub-tree of it) as host numpy arrays: (tree, step).

  Works whatever topology wrote it (1 device, 8 devices, 2 processes): no
  shardings are involved. `item` is an abstract sub-tree (e.g. {"params": ...})
  or a top-level key ("params") to read only part of the state; None reads all.
  """
  directory = checkpoint_dir(path)
  if not os.path.isdir(directory):
    raise MissingPathError(f"no checkpoint in {directory}{nearby_hint(path)}")
  mngr = ocp.CheckpointManager(directory, item_handlers=ocp.PyTreeCheckpointHandler())
  try:
    steps = mngr.all_steps()
    if not steps:
      raise MissingPathError(f"no checkpoint in {directory}{nearby_hint(path)}")
    step = max(steps) if step is None else int(step)
    if step not in steps:
      raise MissingPathError(f"no checkpoint for step {step} in {directory}; have {sorted(steps)}")
    if item is None or isinstance(item, str):
      meta = mngr.item_metadata(step)
      if isinstance(item, str):
        meta = {item: meta[item]}
      item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    tree = mngr.restore(step, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  finally:
    mngr.close()
  return tree, step


def write_config(workdir: str, config) -> None:
  """Stores the run's config next to its checkpoints (JSON, process 0 only)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    _write_atomic(os.path.join(workdir, "config.json"),
                  config.to_json_best_effort(indent=2, sort_keys=True))


BEST_DIR, BEST_JSON = "best", "best.json"


def save_best(workdir: str, state, step: int, summary: dict) -> None:
  """Keeps the validation-selected parameters (and BN statistics) in WORKDIR/best, and their
  validation summary in WORKDIR/best.json."""
  mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, BEST_DIR)),
                               options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
  mngr.save(step, args=ocp.args.StandardSave({"params": state["params"],
                                              "model_state": state["model_state"]}), force=True)
  mngr.wait_until_finished()
  mngr.close()
  write_json(os.path.join(workdir, BEST_JSON), {"step": step, **summary})


def restore_best(workdir: str, state, shardings):
  """(state with the best parameters, best step), or (state, None) if none was saved."""
  d = os.path.abspath(os.path.join(workdir, BEST_DIR))
  if not os.path.isdir(d):
    return state, None
  mngr = ocp.CheckpointManager(d)
  step = mngr.latest_step()
  if step is None:
    return state, None
  keys = ("params", "model_state")
  abstract = abstract_like({k: state[k] for k in keys}, {k: shardings[k] for k in keys})
  best = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  mngr.close()
  return {**state, **best}, step


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
  data = (json.dumps(json_safe(row), allow_nan=False) + "\n").encode()
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


def read_json(path: str, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def write_json(path: str, obj) -> None:
  """Process 0 writes `obj` as strict JSON (NaN/Inf become null, never bare NaN) atomically:
  a reader never sees a half-written file."""
  if jax.process_index() != 0:
    return
  _write_atomic(path, json.dumps(json_safe(obj), indent=1, sort_keys=True, allow_nan=False))


def _write_atomic(path: str, text: str) -> None:
  """A temporary file renamed over `path`; on failure (a full disk) `path` is unchanged and
  the temporary file removed."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def json_safe(obj):
  """JSON has no NaN/Inf: they become None."""
  if isinstance(obj, dict):
    return {k: json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  if isinstance(obj, (float, np.floating)):
    return float(obj) if np.isfinite(obj) else None
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, np.ndarray):
    return json_safe(obj.tolist())
  return obj
