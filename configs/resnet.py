r"""Supervised ResNet baseline of the CMS E2E papers (ResNet-15; resnet50 as an option).

  python -m mae_jax.main --config configs/resnet.py:arch=resnet15 --workdir workdirs/resnet \
      --config.data.dir=data_cache/boosted_top_3000_tfds --config.total_steps=300
"""

from mae_jax import config_util


def get_config(arg=None):
  arg = config_util.parse_arg(arg, arch="resnet15")
  c = config_util.base_config()
  c.stage = "resnet"
  c.task.name = "classify"
  c.model.name = arg["arch"]
  c.optim.b2 = 0.999
  c.optim.weight_decay = 1e-4
  c.lr = 1e-3
  c.warmup_steps = 100
  c.total_steps = 1000
  c.eval_every = 100
  c.figures = False
  return c
