"""One run per workdir: WORKDIR/run.lock refuses a second run and is taken over from a dead one.

The run (process 0 of a job) creates the lock file atomically: a fully written temporary
file is hard-linked to `run.lock`, which fails if the lock exists (an `O_EXCL` create where
hard links are unsupported). It holds JSON {host, pid, start, token, boot_id, proc_start},
and a daemon thread refreshes its mtime every `HEARTBEAT_S` seconds (the heartbeat). A run
that finds the lock
  * refuses to start, in one line naming the holder, if the holder may be alive;
  * takes the lock over with a warning if the holder is dead: on this host, its pid is
    gone, is a zombie, now belongs to another process, or the machine rebooted since; on
    another host, its heartbeat is older than `STALE_AFTER_S`.
So a run killed by SIGKILL is resumed at once by a rerun on the same host, and a run lost
with its node is resumed on another node `STALE_AFTER_S` after its last heartbeat.

Supported filesystems: local ones and NFSv3+ (also Lustre, GPFS, BeeGFS), where link(2)
and O_EXCL creates are atomic; no flock/fcntl locks are used (their NFS semantics vary).
Hosts must agree on the time to within `STALE_AFTER_S` (NTP).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import threading
import time
import uuid

from absl import logging

from mae_jax import errors

LOCK_FILE = "run.lock"
HEARTBEAT_S = 30.0  # mtime refresh period
STALE_AFTER_S = 300.0  # a holder on another host without heartbeat for this long is dead
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _read(path: str) -> str | None:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return None


def _proc_start(pid: int) -> int | None:
  """Start time of process `pid` (clock ticks after boot); None if gone or a zombie."""
  text = _read(f"/proc/{pid}/stat")
  if not text:
    return None
  fields = text.rsplit(")", 1)[1].split()
  return None if fields[0] in ("Z", "X") else int(fields[19])


def _alive(pid: int) -> bool:
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  # os.kill succeeds on a zombie (killed, not yet reaped): it is dead all the same
  return _proc_start(pid) is not None if os.path.isdir("/proc/self") else True


def identity() -> dict:
  """This process, as recorded in a lock (and in a conversion's partial directory)."""
  pid = os.getpid()
  return {"host": socket.gethostname(), "pid": pid,
          "start": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "token": uuid.uuid4().hex, "boot_id": _read(_BOOT_ID), "proc_start": _proc_start(pid)}


def describe(holder: dict) -> str:
  return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
          f"started {holder.get('start', '?')}")


def dead_reason(holder: dict, heartbeat_age: float | None = None) -> str | None:
  """Why the process `holder` (an `identity()`) is known to be dead, or None if it may be
  alive. `heartbeat_age`: seconds since its last heartbeat, None if it keeps none."""
  if holder.get("host") == socket.gethostname():
    boot = _read(_BOOT_ID)
    if holder.get("boot_id") and boot and holder["boot_id"] != boot:
      return "this machine has rebooted since"
    pid = int(holder.get("pid", -1))
    if not _alive(pid):
      return f"process {pid} is no longer running"
    start = _proc_start(pid)
    if holder.get("proc_start") is not None and start is not None and start != holder["proc_start"]:
      return f"process id {pid} now belongs to another process"
    return None
  if heartbeat_age is not None and heartbeat_age > STALE_AFTER_S:
    return f"no heartbeat for {heartbeat_age:.0f} s"
  return None


class WorkdirLock:
  """Holds WORKDIR/run.lock while a run writes there (see the module docstring).

  `with WorkdirLock(workdir):` acquires (or raises `WorkdirLockedError`) and releases at
  exit, exceptions included. `enabled=False` (processes other than 0) does nothing.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self.enabled = enabled
    self.me = identity()
    self.lost = None  # who took the lock from this run, once the heartbeat sees it
    self._stop = threading.Event()
    self._thread = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()

  def acquire(self) -> "WorkdirLock":
    if not self.enabled:
      return self
    for _ in range(10):  # a few rounds when several runs start (or take over) at once
      if self._create():
        self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
        self._thread.start()
        return self
      holder, age = self._holder()
      if holder is None:
        continue  # released between our create and our read
      reason = dead_reason(holder, age)
      if reason is None:
        raise errors.WorkdirLockedError(
            f"{self.workdir} is in use by another run: {describe(holder)} (heartbeat {age:.0f} s "
            f"ago, {self.path}); wait for it to end or use another --workdir (a dead run's "
            "lock is taken over automatically)")
      if self._take_over(holder):
        msg = f"took over the lock of a dead run on {self.workdir} ({describe(holder)}): {reason}"
        logging.warning(msg)
        print(f"warning: {msg}", flush=True)
    raise errors.WorkdirLockedError(
        f"could not lock {self.workdir}: other runs keep taking {self.path} (several runs "
        "started on one workdir at once?)")

  def check(self) -> None:
    """Raises WorkdirLockedError if another run has taken the lock (stop writing then)."""
    if self.lost is not None:
      raise errors.WorkdirLockedError(
          f"lost the lock on {self.workdir} to another run ({describe(self.lost)}); "
          "this run stops without writing more")

  def release(self) -> None:
    if not self.enabled or self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self._thread = None
    with contextlib.suppress(OSError):
      holder, _ = self._holder()
      if holder is not None and holder.get("token") == self.me["token"]:
        os.unlink(self.path)

  def _create(self) -> bool:
    """Creates the lock holding `self.me`, fully written; False if a lock exists."""
    tmp = f"{self.path}.{self.me['token']}.tmp"
    try:
      with open(tmp, "w") as f:
        json.dump(self.me, f)
        f.flush()
        os.fsync(f.fileno())
      try:
        os.link(tmp, self.path)
        return True
      except FileExistsError:
        return False
      except OSError as e:
        if os.stat(tmp).st_nlink == 2:  # NFS: the link was made but its reply was lost
          return True
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
          raise
      try:  # no hard links here: O_EXCL create (a reader may briefly see it empty)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        json.dump(self.me, f)
      return True
    finally:
      with contextlib.suppress(OSError):
        os.unlink(tmp)

  def _holder(self) -> tuple[dict | None, float]:
    """(the lock's content, seconds since its heartbeat); (None, 0) if there is no lock."""
    try:
      age = time.time() - os.stat(self.path).st_mtime
      text = _read(self.path)
    except FileNotFoundError:
      return None, 0.0
    if text is None:
      return None, 0.0
    try:
      holder = json.loads(text)
      if isinstance(holder, dict):
        return holder, age
    except ValueError:
      pass
    return {"host": "unknown (unreadable lock file)", "text": text}, age

  def _take_over(self, holder: dict) -> bool:
    """Removes the dead `holder`'s lock; False if it changed meanwhile (then try again)."""
    moved = f"{self.path}.stale-{self.me['token']}"
    try:
      os.rename(self.path, moved)  # atomic: of several runs taking over, one moves it
    except FileNotFoundError:
      return False
    text = _read(moved)
    try:
      same = text is not None and (json.loads(text) == holder or text == holder.get("text"))
    except ValueError:
      same = text == holder.get("text")
    if not same:  # a live run locked it after we read the dead one's lock: give it back
      with contextlib.suppress(OSError):
        os.link(moved, self.path)
    with contextlib.suppress(OSError):
      os.unlink(moved)
    return same

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        holder, _ = self._holder()
        if holder is None and self._create():  # removed by hand: lock again
          continue
        if holder is None or holder.get("token") != self.me["token"]:
          self.lost = holder or {"host": "?"}
          logging.error("lost the lock %s to %s", self.path, describe(self.lost))
          return
        os.utime(self.path)
      except OSError as e:  # e.g. a transient NFS error: try again at the next beat
        logging.warning("workdir lock heartbeat failed: %s", e)
