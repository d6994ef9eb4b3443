r"""Command line entry point.

  python -m mae_jax.main --config configs/pretrain.py:variant=tiny --workdir DIR \
      --config.data.dir=DATA --config.total_steps=300

`--config.FIELD=VALUE` overrides any config field; an unknown field is an
error (the config is locked). A workdir that holds checkpoints is resumed.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and figures.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # imported here so that XLA_FLAGS set by launchers are in place

  config = _CONFIG.value
  from mae_jax import errors, parallel, trainer
  d = config.get("distributed", None)
  if d is not None:
    parallel.maybe_initialize_distributed(d.coordinator_address, d.num_processes, d.process_id)
  else:
    parallel.maybe_initialize_distributed()
  logging.info("backend %s, %d devices", jax.default_backend(), jax.device_count())
  from mae_jax import cpu_env
  cpu_env.warn_if_untuned(jax.default_backend())
  try:
    trainer.train_and_evaluate(config, _WORKDIR.value)
  except errors.USER_ERRORS as e:
    # One clear line instead of a traceback for errors in the user's input.
    print(f"error: {e}", file=sys.stderr)
    logging.error("%s", e)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
