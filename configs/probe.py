r"""Linear probe: frozen pretrained encoder, BatchNorm (no affine) + linear head.

  python -m mae_jax.main --config configs/probe.py:variant=tiny --workdir workdirs/probe \
      --config.data.dir=data_cache/boosted_top_3000_tfds \
      --config.model_init=workdirs/quickstart --config.total_steps=300

`model_init` is the pretrain workdir; its `encoder` parameters go to
`backbone/encoder` and are frozen (optimizer updates are exactly zero). Arguments:
variant, patch, model (the MAE family of the pretrain run), pool (cls | mean | max).
"""

from mae_jax import config_util


def get_config(arg=None):
  c = config_util.classifier_config("probe", arg)
  c.model.head_bn = True
  c.optim.frozen = r"backbone/.*"
  c.optim.weight_decay = 0.0
  c.lr = 0.1  # MAE probe recipe (LARS there; AdamW here), base lr for batch 256
  c.warmup_steps = 50
  c.total_steps = 1000
  c.eval_every = 100
  return c
