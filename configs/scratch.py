r"""From scratch: the finetune model and budget, randomly initialised (no model_init).

  python -m mae_jax.main --config configs/scratch.py:variant=tiny --workdir workdirs/scratch \
      --config.data.dir=data_cache/boosted_top_3000_tfds --config.total_steps=300
"""

import importlib.util
import os


def get_config(arg=None):
  spec = importlib.util.spec_from_file_location(
      "finetune", os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune.py"))
  finetune = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(finetune)
  c = finetune.get_config(arg)
  c.stage = "scratch"
  c.model_load = ""
  c.optim.layer_decay = 1.0  # no pretrained layers to protect
  return c
