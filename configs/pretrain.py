r"""MAE pretraining of a ViT encoder on a converted CMS E2E dataset.

Quick run (tiny model, CPU):
  python -m mae_jax.main --config configs/pretrain.py:variant=tiny \
      --workdir workdirs/pretrain_tiny --config.data.dir=data_cache/qg_tfds \
      --config.total_steps=300 --config.batch_size=32

Reference Base MAE on 125x125x8 boosted-top images (accelerators):
  python -m mae_jax.main --config configs/pretrain.py:variant=e2e-base \
      --workdir workdirs/pretrain_base --config.data.dir=/data/boosted_top_tfds

Arguments after ':' (comma separated): variant (tiny, small-e2e, e2e-base, S, B, L),
patch (default 5), model (mae, depthwise_mae, convstem_mae, convmae, channel_mae). Every field of
mae_jax.config_util.base_config can be overridden with --config.FIELD=VALUE; unknown
fields are an error.
"""

from mae_jax import config_util


def get_config(arg=None):
  arg = config_util.parse_arg(arg, variant="tiny", patch=5, model="mae")
  c = config_util.base_config(arg["variant"], arg["patch"])
  c.stage = "pretrain"
  c.model.name = arg["model"]  # mae | depthwise_mae | convstem_mae | convmae | channel_mae
  c.task.name = "mae"
  return c
