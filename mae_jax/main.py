r"""Command line entry point (also installed as `mae-jax-train`).

  python -m mae_jax.main --config configs/pretrain.py:variant=tiny --workdir DIR \
      --config.data.dir=DATA --config.total_steps=300

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
    "config", None, "Experiment config file, e.g. configs/pretrain.py:variant=tiny; its fields "
    "are listed by --print_config and documented in mae_jax/config_util.py (base_config).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and figures.")
_PRINT = flags.DEFINE_bool("print_config", False, "Print the config's fields and exit.")
flags.mark_flag_as_required("config")


def fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl flag parsing with a one-line error for a bad `--config.x=y`, not a traceback."""
  from mae_jax import config_util
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    if isinstance(e, flags.Error) and not any(a.startswith("--config.") for a in argv):
      fail(f"{e}\nusage: python -m mae_jax.main --config configs/X.py --workdir DIR "
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
    trainer.train_and_evaluate(config, _WORKDIR.value)
  except errors.USER_ERRORS as e:
    # One clear line instead of a traceback for the project's errors (not for bugs).
    sys.exit(errors.exit_status(e))


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
