r"""From scratch: the finetune model and budget, randomly initialised (no model_init).

  python -m mae_jax.main --config configs/scratch.py:variant=tiny --workdir workdirs/scratch \
      --config.data.dir=data_cache/boosted_top_3000_tfds --config.total_steps=300
"""

from mae_jax import config_util


def get_config(arg=None):
  c = config_util.config_module("finetune").get_config(arg)
  c.stage = "scratch"
  c.model_load = ""
  c.optim.layer_decay = 1.0  # no pretrained layers to protect
  return c
