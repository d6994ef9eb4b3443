"""The project's exception types, one home for each kind of failure.

Entry points (`mae_jax.main`, the converter and export CLIs, the protocol) turn
these, and only these, into one line on stderr and a non-zero exit instead of a
traceback (`exit_status`): they are errors in the user's input or in the run's
numbers, not bugs. Any other exception (a ValueError from flax, jax or a model) keeps
its traceback; MAE_JAX_TRACEBACK=1 shows the traceback of these too. Library code
raises them and never exits.
"""

import errno
import os
import re
import sys


class DataFormatError(ValueError):
  """Input data does not follow a supported layout (names the file, key, shape)."""


class NonFiniteError(ArithmeticError):
  """NaN or Inf where finite numbers are required: input images (converter) or a
  training run's loss, gradient or model outputs (trainer, evaluation); a diverged loss
  is not a data-format fault."""


class VerificationError(ValueError):
  """A converted dataset does not match its own metadata (counts, checksums)."""


class CorruptDataError(DataFormatError):
  """A record of a converted dataset cannot be read back (corrupted, truncated or unreadable
  shard); names the shard file, the split and the byte offset."""


class UsageError(ValueError):
  """A wrong command-line argument, config value, path or workdir (names the value at fault);
  what library code raises where it used to `raise SystemExit(message)`."""


class MissingPathError(UsageError, FileNotFoundError):
  """A path the user named (dataset, workdir, checkpoint, input file) does not exist."""


class PathExistsError(UsageError, FileExistsError):
  """An output path the user named exists already (and is not to be replaced)."""


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir (names its host, pid and start time)."""


class DiskFullError(OSError):
  """A write failed for lack of space or quota, or on a read-only filesystem; names the
  device, the directory and what was kept."""


# What the command-line entry points report in one line (exit status 2): the project's own
# types only, so that a bug's ValueError/KeyError keeps its traceback.
USER_ERRORS = (DataFormatError, NonFiniteError, VerificationError, CorruptDataError, UsageError,
               WorkdirLockedError, DiskFullError)


def exit_status(exc: BaseException, prefix: str = "error") -> int:
  """For a command-line entry point that caught `exc`, one of USER_ERRORS: prints
  'PREFIX: message' on stderr and returns 2 (the exit status); with MAE_JAX_TRACEBACK=1
  re-raises it, traceback and all."""
  if os.environ.get("MAE_JAX_TRACEBACK", "") not in ("", "0"):
    raise exc
  print(f"{prefix}: {exc}", file=sys.stderr)
  return 2


def run_cli(main, *args, prefix: str = "error") -> int:
  """`main(*args)` for a console script: its return value (None = 0) is the exit status, a
  project error one line on stderr and exit status 2 (`exit_status`); anything else keeps
  its traceback."""
  try:
    status = main(*args)
  except USER_ERRORS as e:
    return exit_status(e, prefix)
  return status if isinstance(status, int) else 0  # some mains return their results


_DISK_ERRNOS = {errno.ENOSPC: "no space left on", errno.EDQUOT: "disk quota exceeded on",
                errno.EROFS: "read-only filesystem on"}


def disk_errno(exc: BaseException) -> int | None:
  """ENOSPC, EDQUOT or EROFS if `exc` or an exception it was raised from is one, also when
  a library (Orbax/TensorStore, TensorFlow) passed it on as text only; else None."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
      return exc.errno
    text = str(exc)
    code = re.search(r"os_error_code='?(\d+)", text)  # TensorStore
    if code and int(code.group(1)) in _DISK_ERRNOS:
      return int(code.group(1))
    for e in _DISK_ERRNOS:
      if os.strerror(e) in text:  # "No space left on device", as TF and TensorStore quote it
        return e
    exc = exc.__cause__ or exc.__context__
  return None


def describe_device(path: str) -> str:
  """The filesystem holding `path`, e.g. '/dev/sda1 (mounted at /scratch)', from the mount
  table (the longest mount point above the path)."""
  path = os.path.realpath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  best = None
  try:
    with open("/proc/self/mounts") as f:
      for line in f:
        parts = line.split()
        if len(parts) < 2:
          continue
        source, mount = (re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), p)
                         for p in parts[:2])
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and \
            (best is None or len(mount) >= len(best[1])):
          best = (source, mount)
  except OSError:
    pass
  if best is not None:
    return f"{best[0]} (mounted at {best[1]})"
  dev = os.stat(path).st_dev
  return f"device {os.major(dev)}:{os.minor(dev)}"


def disk_full_error(exc: BaseException, directory: str, kept: str) -> "DiskFullError | None":
  """The one-line DiskFullError for `exc` if a full disk, a quota or a read-only filesystem
  caused it ('no space left on DEVICE for DIRECTORY; KEPT'), else None."""
  code = disk_errno(exc)
  if code is None:
    return None
  return DiskFullError(f"{_DISK_ERRNOS[code]} {describe_device(directory)} for {directory}; {kept}")
