"""Reliability: SIGTERM preemption, SIGKILL + exact resume, interrupted checkpoints, bad input,
and the faults of a shared cluster: corrupted records, two runs on one workdir, a full disk."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mae_jax import checkpoint, errors, trainer, workdir_lock
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


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(dataset, tmp_path):
  ref = tmp_path / "ref"
  r = run_main(*main_args(ref, dataset, 8))
  assert r.returncode == 0, r.stderr[-2000:]
  _, want = params(ref, 8)

  w = tmp_path / "killed"
  proc = start_main(*main_args(w, dataset, 8))
  wait_for_line(proc, "step 5/8")
  proc.kill()  # SIGKILL: no handler runs, a save may be half written, the lock stays
  proc.wait()
  assert ocp.CheckpointManager(os.path.join(w, "checkpoints")).latest_step() in (2, 4)
  assert os.path.exists(w / workdir_lock.LOCK_FILE)
  r = run_main(*main_args(w, dataset, 8))
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"took over the lock of a dead run on {w} (host" in r.stdout  # unattended resume
  assert not os.path.exists(w / workdir_lock.LOCK_FILE)
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


# Faults of a shared cluster.


def small_config(dataset, **overrides):
  c = load_config(**{"batch_size": 8, "warmup_steps": 1, "ckpt_every": 2, "figures": False,
                     **overrides})
  c.data.dir, c.data.eval_split, c.data.test_split = dataset, "", ""
  return c


def flip_bytes(path, where=0.5, n=64):
  """n bytes flipped at a fraction of a shard, its size unchanged (what check_shards misses)."""
  data = bytearray(open(path, "rb").read())
  mid = int(len(data) * where)
  data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
  open(path, "wb").write(bytes(data))


def test_corrupted_record_stops_in_one_line_or_is_skipped_and_counted(dataset, tmp_path):
  bad = tmp_path / "bad"
  shutil.copytree(dataset, bad)
  shards = {s: str(bad / f"mae_jax_converted-{s}.tfrecord-00000-of-00001")
            for s in ("train", "validation")}
  flip_bytes(shards["train"], 0.75)  # a small shuffle buffer reaches it after a few steps
  flip_bytes(shards["validation"])
  w = str(tmp_path / "w")
  c = small_config(str(bad), total_steps=4, ckpt_every=1)
  c.data.shuffle_buffer = 8
  with pytest.raises(errors.CorruptDataError) as e:
    trainer.train_and_evaluate(c, w)
  msg, last = str(e.value), checkpoint.last_good_step(w)
  assert f"record in {shards['train']} (split 'train', byte offset " in msg, msg
  assert f"convert verify {bad}" in msg and msg.endswith(f"last good checkpoint: step {last}")
  assert "\n" not in msg and last >= 1 and not checkpoint.interrupted_saves(w)
  _, it = pipeline.Pipeline(str(bad)).eval_iter("validation", 8, 8)  # evaluation: the same
  with pytest.raises(errors.CorruptDataError, match=f"{shards['validation']} .split 'validation'"):
    list(it)

  c.data.on_corrupt = "skip"
  final = trainer.train_and_evaluate(c, w)
  lost = final["train/unreadable_records"]
  assert 0 < lost < 32 and final["last_step"] == 4
  assert checkpoint.read_history(w)[-1]["unreadable_records"] == lost
  skip = pipeline.Pipeline(str(bad), on_corrupt="skip")
  _, it = skip.eval_iter("validation", 8, 8)
  valid = sum(int(b["valid"].sum()) for b in it)
  assert valid == 8 - skip.unreadable["validation"] and valid < 8


def test_second_run_on_a_held_workdir_is_refused(dataset, tmp_path):
  w = tmp_path / "w"
  w.mkdir()
  holder = workdir_lock.WorkdirLock(str(w)).acquire()  # a live run (this process)
  try:
    with pytest.raises(errors.WorkdirLockedError) as e:
      trainer.train_and_evaluate(small_config(dataset, total_steps=1), str(w))
  finally:
    holder.release()
  msg = str(e.value)
  assert f"{w} is in use by another run: host {socket.gethostname()}, pid {os.getpid()}, " \
      f"started {holder.me['start']}" in msg
  assert sorted(os.listdir(w)) == []  # refused before writing anything, lock released


def test_two_processes_racing_for_one_workdir_one_wins(tmp_path):
  go = tmp_path / "go"
  code = ("import os, sys, time\n"
          "from mae_jax import errors, workdir_lock\n"
          f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
          "try:\n"
          f"  lock = workdir_lock.WorkdirLock({str(tmp_path)!r}).acquire()\n"
          "except errors.WorkdirLockedError as e:\n"
          "  sys.exit(print(e))\n"
          "print('locked', flush=True); time.sleep(2); lock.release()\n")
  procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True) for _ in range(2)]
  time.sleep(1)  # both interpreters started and waiting
  go.touch()
  outs = [p.communicate(timeout=60)[0].strip() for p in procs]
  assert outs.count("locked") == 1, outs
  assert "is in use by another run: host" in (outs[0] + outs[1]), outs
  assert not os.path.exists(tmp_path / workdir_lock.LOCK_FILE)


def test_dead_holders_lock_is_taken_over(tmp_path, capsys, monkeypatch):
  path = tmp_path / workdir_lock.LOCK_FILE
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  holder = {**workdir_lock.identity(), "pid": dead.pid}
  path.write_text(json.dumps(holder))
  workdir_lock.WorkdirLock(str(tmp_path)).acquire().release()
  assert f"process {dead.pid} is no longer running" in capsys.readouterr().out
  # another host: alive while its heartbeat is fresh, dead after STALE_AFTER_S
  path.write_text(json.dumps({**holder, "host": "node-7"}))
  with pytest.raises(errors.WorkdirLockedError, match="host node-7, pid"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  old = time.time() - workdir_lock.STALE_AFTER_S - 10
  os.utime(path, (old, old))
  workdir_lock.WorkdirLock(str(tmp_path)).acquire().release()
  assert "(host node-7" in capsys.readouterr().out and not path.exists()
  # a run whose lock was taken over stops before its next save
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
  lock = workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  path.write_text(json.dumps({**holder, "host": "node-8", "token": "x"}))
  time.sleep(0.5)
  with pytest.raises(errors.WorkdirLockedError, match="lost the lock .*host node-8"):
    lock.check()
  lock.release()
  assert path.exists()  # not ours to remove


def test_disk_full_during_checkpoint_is_one_line_and_keeps_last_good(dataset, tmp_path,
                                                                      monkeypatch):
  w = str(tmp_path / "w")
  save = checkpoint.save

  def full_at_4(mngr, step, state):
    if step == 4:  # what Orbax raised on a 3 MB tmpfs, and the save it left behind
      os.makedirs(os.path.join(w, "checkpoints", "4.orbax-checkpoint-tmp"))
      raise ValueError('RESOURCE_EXHAUSTED: Error writing "opt_state.0.0.mu" in OCDBT database: '
                       "Failed to write 103699 bytes to file 5: No space left on device "
                       "[os_error_code='28']")
    return save(mngr, step, state)

  monkeypatch.setattr(checkpoint, "save", full_at_4)
  with pytest.raises(errors.DiskFullError) as e:
    trainer.train_and_evaluate(small_config(dataset, total_steps=4), w)
  assert str(e.value) == (f"no space left on {errors.describe_device(w)} for {w}; "
                          "last good checkpoint: step 2")
  assert errors.DiskFullError in errors.USER_ERRORS  # main: this one line, exit status 2
  assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["2"]
  assert not os.path.exists(os.path.join(w, workdir_lock.LOCK_FILE))


def test_metrics_write_on_a_full_disk_leaves_no_half_line(tmp_path, monkeypatch):
  path = str(tmp_path / checkpoint.HISTORY)
  checkpoint.append_jsonl(path, {"step": 1, "loss": 0.5})
  write = os.write

  def half_then_full(fd, data):
    write(fd, data[:len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  with monkeypatch.context() as m:
    m.setattr(os, "write", half_then_full)
    with pytest.raises(OSError) as e:
      checkpoint.append_jsonl(path, {"step": 2, "loss": 0.25})
  assert errors.disk_errno(e.value) == errno.ENOSPC
  assert checkpoint.read_history(path) == [{"step": 1, "loss": 0.5}]
  def full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  with monkeypatch.context() as m:
    m.setattr(os, "replace", full)
    with pytest.raises(OSError):
      checkpoint.write_json(str(tmp_path / "final_metrics.json"), {"a": 1})
  assert sorted(os.listdir(tmp_path)) == [checkpoint.HISTORY]  # no temporary file left


def _flip(path, n=256):
  """Flips `n` bytes in the middle of `path` (what a bad disk or a bit-rotted copy leaves)."""
  with open(path, "r+b") as f:
    size = os.path.getsize(path)
    f.seek(max(0, size // 2 - n // 2))
    data = f.read(n)
    f.seek(max(0, size // 2 - n // 2))
    f.write(bytes(b ^ 0xFF for b in data))


def _array_files(step_dir):
  """The data files of a step (not its JSON metadata), largest first."""
  out = [os.path.join(r, n) for r, _, names in os.walk(step_dir) for n in names
         if not n.endswith(".json") and "METADATA" not in n and n != "manifest.ocdbt"]
  return sorted(out, key=os.path.getsize, reverse=True)


def test_corrupted_latest_checkpoint_is_set_aside_and_the_run_resumes(dataset, tmp_path, capsys,
                                                                      monkeypatch):
  w = str(tmp_path / "w")
  c = load_config(batch_size=8, total_steps=4, warmup_steps=1, ckpt_every=2, log_every=1,
                  figures=False)
  c.data.dir, c.data.eval_split = dataset, ""
  trainer.train_and_evaluate(c, w)
  ckpts = os.path.join(w, "checkpoints")
  for s in ("2", "4"):  # every completed save has its manifest, written by process 0
    m = checkpoint.read_json(os.path.join(ckpts, s, checkpoint.MANIFEST))
    assert m and all(len(v) == 64 for v in m.values())
  assert checkpoint.check_step(ckpts, 4) is None
  want = params(w, 2)[1]
  # 256 flipped bytes that the decoder does not notice (garbage, then NaN): the sha256 does
  _flip(_array_files(os.path.join(ckpts, "4"))[0])
  assert checkpoint.check_step(ckpts, 4).startswith("sha256 mismatch in ")
  capsys.readouterr()
  c.total_steps = 5
  trainer.train_and_evaluate(c, w)
  out = capsys.readouterr().out
  line = next(ln for ln in out.splitlines() if "is corrupted" in ln)
  assert line.startswith(f"warning: checkpoint step 4 in {ckpts} is corrupted (sha256 mismatch")
  assert line.endswith(f"set aside as {ckpts}/4.corrupt-0")
  assert "step 3/5" in out and "step 5/5" in out  # resumed from the intact step 2
  assert os.path.isdir(os.path.join(ckpts, "4.corrupt-0"))  # kept, not deleted
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(params(w, 2)[1])):
    np.testing.assert_array_equal(a, b)
  # A step without a manifest (saved before manifests) whose data TensorStore cannot decode:
  # its error (as TensorStore words it) sets the step aside the same way.
  os.remove(os.path.join(ckpts, "5", checkpoint.MANIFEST))
  orig = ocp.CheckpointManager.restore

  def restore(self, step, *a, **k):
    if step == 5:
      raise ValueError("DATA_LOSS: Error reading local file: ZSTD_decompressStream() failed: "
                       "Data corruption detected\n(and 150 more lines)")
    return orig(self, step, *a, **k)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
  c.total_steps = 6
  trainer.train_and_evaluate(c, w)
  out = capsys.readouterr().out
  line = next(ln for ln in out.splitlines() if "is corrupted" in ln)
  assert line.startswith(f"warning: checkpoint step 5 in {ckpts} is corrupted (DATA_LOSS")
  # the newest intact step is now 4 (the rerun above saved 4 and 5 again)
  assert "step 5/6" in out and "step 4/6" not in out
  assert os.path.isdir(os.path.join(ckpts, "5.corrupt-0"))


def test_no_intact_checkpoint_is_one_line(dataset, tmp_path):
  w = str(tmp_path / "w")
  c = load_config(batch_size=8, total_steps=2, warmup_steps=1, ckpt_every=2, figures=False)
  c.data.dir, c.data.eval_split = dataset, ""
  trainer.train_and_evaluate(c, w)
  _flip(_array_files(os.path.join(w, "checkpoints", "2"))[-1], 8)  # a small file, a few bytes
  c.total_steps = 3
  with pytest.raises(errors.CorruptDataError, match=r"no intact checkpoint in .*: steps \[2\] "
                     r"are corrupted .*; last good checkpoint: none$") as e:
    trainer.train_and_evaluate(c, w)
  assert "\n" not in str(e.value)


def test_ctrl_c_saves_then_exits_130_in_one_line(dataset, tmp_path):
  """SIGINT behaves as SIGTERM (checkpoint, one line naming the step and how to resume) but
  exits 130, without a KeyboardInterrupt traceback; a second run resumes after that step."""
  w = tmp_path / "int"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
  err_file = tmp_path / "stderr.txt"
  with open(err_file, "w") as err_f:  # a file, not a pipe: absl's log lines never block it
    proc = subprocess.Popen([sys.executable, "-m", "mae_jax.main",
                             *main_args(w, dataset, 500, "--config.ckpt_every=1000")], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=err_f, text=True)
    wait_for_line(proc, "step 2/500")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
  err = err_file.read_text()
  assert proc.returncode == 130, (out + err)[-2000:]
  lines = [ln for ln in out.splitlines() if ln.startswith("preempted:")]
  assert len(lines) == 1 and "SIGINT received; checkpoint written at step" in lines[0], out
  assert "rerun the same command to resume" in lines[0]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
  step, _ = params(w)
  assert f"at step {step} " in lines[0] and 2 <= step < 500


def test_ctrl_c_during_compilation_only_sets_the_flag(dataset, tmp_path, monkeypatch):
  """The handlers are installed before the first compile: a SIGINT delivered while the
  state is being built (here from inside create_state) stops the run after its first step
  with a checkpoint and returns preempted_at, as the protocol expects."""
  from mae_jax import experiment
  real = experiment.create_state

  def create_then_interrupt(*a, **k):
    os.kill(os.getpid(), signal.SIGINT)
    return real(*a, **k)

  monkeypatch.setattr(experiment, "create_state", create_then_interrupt)
  # what the run must restore: pytest's default, or SIG_IGN when the suite itself was started
  # in the background (`cmd &` in a non-interactive shell ignores SIGINT)
  before = signal.getsignal(signal.SIGINT)
  config = load_config(data__dir=dataset, total_steps=50, batch_size=8, warmup_steps=2,
                       log_every=1, ckpt_every=1000, figures=False, data__shuffle_buffer=64)
  out = trainer.train_and_evaluate(config, str(tmp_path / "c"))
  assert out["preempted_at"] == 1 and out["signal"] == "SIGINT"
  assert params(tmp_path / "c")[0] == 1
  assert signal.getsignal(signal.SIGINT) is before  # restored
