r"""MAE pretraining of a ViT encoder on a converted CMS E2E dataset.

Quick run (tiny model, CPU):
  python -m mae_jax.main --config configs/pretrain.py:variant=tiny \
      --workdir workdirs/pretrain_tiny --config.data.dir=data_cache/qg_tfds \
      --config.total_steps=300 --config.batch_size=32

Reference Base MAE on 125x125x8 boosted-top images (accelerators):
  python -m mae_jax.main --config configs/pretrain.py:variant=e2e-base \
      --workdir workdirs/pretrain_base --config.data.dir=/data/boosted_top_tfds

Arguments after ':' (comma separated): variant (tiny, small-e2e, e2e-base, S, B, L),
patch (default 5). Any field below can be overridden with --config.FIELD=VALUE;
unknown fields are an error.
"""

import ml_collections

from mae_jax import config_util


def get_config(arg=None):
  arg = config_util.parse_arg(arg, variant="tiny", patch=5)
  c = ml_collections.ConfigDict()
  c.stage = "pretrain"
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # a directory written by `python -m mae_jax.data.convert`
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.normalization = "log1p"  # none | div255 | log1p | zscore | log1p_zscore
  c.data.shuffle_buffer = 10_000

  c.model = ml_collections.ConfigDict()
  c.model.variant = arg["variant"]
  c.model.patch = arg["patch"]
  c.model.mask_ratio = 0.75
  c.model.norm_pix_loss = False
  c.model.dtype = "float32"  # compute dtype; "bfloat16" keeps float32 parameters

  c.batch_size = 256  # global, over all devices and hosts
  c.total_steps = 10_000
  c.warmup_steps = 500
  c.lr = 1.5e-4  # base lr; the peak is lr * batch_size / 256
  c.min_lr = 0.0
  c.optim = ml_collections.ConfigDict()
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.05
  c.optim.grad_clip_norm = 0.0  # 0 = off
  c.optim.frozen = ""  # regex over "/"-joined parameter names

  c.mesh = [("data", -1)]  # add ("fsdp", N) to split parameters over N devices

  c.log_every = 10
  c.eval_every = 0  # 0 = only at the end
  c.ckpt_every = 500
  c.keep_ckpts = 3
  c.nan_policy = "stop"  # stop | skip (skipped steps are counted and logged)
  c.figures = True

  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = -1
  c.distributed.process_id = -1
  return c
