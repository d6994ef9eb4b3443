r"""Finetune: the whole pretrained encoder trains, with layer-wise lr decay and drop path.

After `bash launch/quickstart.sh` (its pretrain run is workdirs/quickstart/seed0/pretrain):
  python -m mae_jax.main --config configs/finetune.py:variant=tiny,tokens=sparse \
      --workdir workdirs/finetune --config.data.dir=data_cache/boosted_top_3000_tfds \
      --config.model_init=workdirs/quickstart/seed0/pretrain --config.total_steps=300 \
      --config.batch_size=64 --config.lr=4e-3

Arguments: variant, patch, model (the MAE family of the pretrain run), pool,
tokens (dense | sparse, as the pretrain run).
"""

from mae_jax import config_util


def get_config(arg=None):
  c = config_util.classifier_config("finetune", arg)
  c.model.drop_path = 0.1
  # MAE finetune recipe: a near-zero head, so its initial random direction cannot decide the
  # ranking; with the probe's 0.01 and a small lr, 100 steps left the test AUC at 0.25 (the
  # random head's direction, loss still log 2) on the generated top/QCD jets
  c.model.head_init_std = 2e-5
  # the probe's BatchNorm (no affine) before the head: without it, short finetunes on these
  # jets kept every score on one side of 0.5 (accuracy 0.50 at AUC 0.79 after 200 steps;
  # 0.86 / 0.914 with it, 2,000 generated top/QCD jets)
  c.model.head_bn = True
  c.optim.layer_decay = 0.75
  c.optim.b2 = 0.999
  c.lr = 1e-3  # MAE finetune recipe base lr (batch 256)
  c.warmup_steps = 100
  c.total_steps = 1000
  c.eval_every = 100
  return c
