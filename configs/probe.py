r"""Linear probe: frozen pretrained encoder, BatchNorm (no affine) + linear head.

After `bash launch/quickstart.sh` (its pretrain run is workdirs/quickstart/seed0/pretrain):
  python -m mae_jax.main --config configs/probe.py:variant=tiny,tokens=sparse \
      --workdir workdirs/probe --config.data.dir=data_cache/boosted_top_3000_tfds \
      --config.model_init=workdirs/quickstart/seed0/pretrain --config.total_steps=300 \
      --config.batch_size=64

`model_init` is the pretrain workdir; its `encoder` parameters go to
`backbone/encoder` and are frozen (optimizer updates are exactly zero). Arguments:
variant, patch, model (the MAE family of the pretrain run), pool (cls | mean | max),
tokens (dense | sparse, as the pretrain run).
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
