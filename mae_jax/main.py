r"""Command line entry point (also installed as `mae-jax-train`).

  python -m mae_jax.main --config configs/pretrain.py:variant=tiny --workdir DIR \
      --config.data.dir=DATA --config.total_steps=300

`--config` takes a file path or the short name of a config that ships with mae_jax
(`--config pretrain:variant=tiny`; pretrain, probe, finetune, scratch, resnet), which
works wherever mae_jax is installed. Quiet by default: progress, results and warnings;
`--verbosity=0` (or `-v 0`) adds absl's INFO lines, `--verbosity=1` debug lines.

`--config.FIELD=VALUE` overrides any config field; an unknown or mistyped field is
a one-line error naming the closest field (the config is locked). `--print_config`
prints every field of the config with its value and exits. A workdir that holds
checkpoints is resumed.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: a short name (pretrain, probe, finetune, scratch, resnet) "
    "or a file, with ':ARGS', e.g. pretrain:variant=tiny or configs/pretrain.py:variant=tiny; "
    "its fields "
    "are listed by --print_config and documented in mae_jax/config_util.py (base_config).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and figures.")
_PRINT = flags.DEFINE_bool("print_config", False, "Print the config's fields and exit.")
flags.mark_flag_as_required("config")


EXIT_SIGINT = 130  # 128 + SIGINT; a SIGTERM preemption exits 0 (the cluster resubmits)


def fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def resolve_config_flag(argv):
  """`--config NAME[:ARGS]` -> the shipped config's file; a missing file or a config that
  rejects its ARGS is a one-line error here, before absl parses it (config_flags would
  defer the first and print a traceback for the second)."""
  from mae_jax import config_util, errors
  argv = list(argv)
  for i, a in enumerate(argv):
    if a.startswith("--config=") or a == "--config" and i + 1 < len(argv):
      j, value = (i, a[len("--config="):]) if a.startswith("--config=") else (i + 1, argv[i + 1])
      try:
        resolved = config_util.resolve_config_arg(value)
        config_util.load_config(value)
      except errors.USER_ERRORS as e:
        sys.exit(errors.exit_status(e))
      argv[j] = ("--config=" if j == i else "") + resolved
  return argv


def parse_flags(argv):
  """absl flag parsing with a one-line error for a bad `--config.x=y`, not a traceback."""
  from mae_jax import config_util
  argv = resolve_config_flag(argv)
  try:
    rest = flags.FLAGS(argv)
    if not flags.FLAGS["verbosity"].present:
      # quiet by default (absl's INFO lines are for debugging); --verbosity=0 shows them
      logging.set_verbosity(logging.WARNING)
    return rest
  except (AttributeError, KeyError, flags.Error) as e:
    if isinstance(e, flags.Error) and not any(a.startswith("--config.") for a in argv):
      fail(f"{e}\nusage: python -m mae_jax.main --config pretrain[:ARGS] --workdir DIR "
           "[--config.FIELD=VALUE ...]")
    fail(config_util.describe_override_error(e, [a for a in argv if a.startswith("--config.")]))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if _PRINT.value:
    print(config)
    return
  if not _WORKDIR.value:
    fail("--workdir is required")
  from mae_jax import errors
  from mae_jax.data import meta as meta_lib
  try:  # a wrong data path fails now, before jax starts and the workdir is made
    if config.get("data") and config.data.dir:
      meta_lib.load_meta(config.data.dir)
  except errors.USER_ERRORS as e:
    sys.exit(errors.exit_status(e))
  import jax  # imported here so that XLA_FLAGS set by launchers are in place

  from mae_jax import cpu_env, errors, parallel, trainer
  d = config.get("distributed", None)
  if d is not None:
    parallel.maybe_initialize_distributed(d.coordinator_address, d.num_processes, d.process_id)
  else:
    parallel.maybe_initialize_distributed()
  logging.info("backend %s, %d devices", jax.default_backend(), jax.device_count())
  cpu_env.warn_if_untuned(jax.default_backend())
  try:
    result = trainer.train_and_evaluate(config, _WORKDIR.value)
  except errors.USER_ERRORS as e:
    # One clear line instead of a traceback for the project's errors (not for bugs).
    sys.exit(errors.exit_status(e))
  except KeyboardInterrupt:  # Ctrl-C outside the training steps (set-up, final evaluation)
    print(f"interrupted: Ctrl-C; rerun the same command to resume from the last checkpoint in "
          f"{_WORKDIR.value}", file=sys.stderr)
    sys.exit(EXIT_SIGINT)
  if result.get("signal") == "SIGINT":  # stopped by Ctrl-C after a checkpoint: as shells expect
    sys.exit(EXIT_SIGINT)


def run():
  import os
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    # TensorFlow (the input pipeline) prints its C++ start-up lines unless told not to
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
