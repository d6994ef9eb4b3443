"""Model from config: `config.model.name` picks the class, the rest sizes it.

  mae, depthwise_mae, convstem_mae, convmae,  masked autoencoders -> (pred, aux)
  channel_mae
  classifier                                  MAE-family encoder + head -> (outputs, aux)
  resnet15, resnet50                          supervised baselines -> (outputs, aux)
"""

from __future__ import annotations

import jax.numpy as jnp

from mae_jax.errors import UsageError
from mae_jax.models import attention, classifier, compressive, resnet, sparse
from mae_jax.models import mae as mae_lib
from mae_jax.models.hybrids import channel, convmae, convstem, depthwise

MAE_FAMILY = {"mae": mae_lib.MAE, "depthwise_mae": depthwise.DepthwiseMAE,
              "convstem_mae": convstem.ConvStemMAE, "convmae": convmae.ConvMAE,
              "channel_mae": channel.ChannelMAE}  # the MaskedAutoencoder interface
BASELINES = {"resnet15": resnet.ResNet15, "resnet50": resnet.ResNet50}


def num_outputs(config) -> int:
  if config.task.name == "regress":
    return len([t for t in config.task.targets.split(",") if t.strip()])
  return 1


TOKENS = ("dense", "sparse")


def is_sparse(config) -> bool:
  """Whether the model takes occupied-patch lists (`patch_ids`) from the input pipeline."""
  tokens = config.model.get("tokens", "dense")
  if tokens not in TOKENS:
    raise UsageError(f"model.tokens={tokens!r}; choose one of {TOKENS}")
  return tokens == "sparse"


def model_inputs(batch) -> dict:
  """Keyword inputs besides the images: the occupied-patch lists of sparse-token models."""
  return {"patch_ids": batch["patch_ids"]} if "patch_ids" in batch else {}


def mae_family_model(name, m, image_shape, drop_path=0.0, pred_dim=0):
  """`pred_dim`: the decoder's output width (0 = p*p*C pixels; the MAE target's, see
  `build_model`)."""
  if name not in MAE_FAMILY:
    raise UsageError(
        f"model {name!r} is not a masked autoencoder; choose one of {sorted(MAE_FAMILY)}")
  mae_lib.check_image_shape(image_shape, m.patch)
  dec_depth = m.get("dec_depth", 0)
  if not isinstance(dec_depth, int) or dec_depth < 0:
    raise UsageError(f"model.dec_depth={dec_depth!r}; choose 0 (the variant's own decoder "
                     "depth) or a number of decoder blocks >= 1")
  pred_init = m.get("pred_init", "xavier")
  if pred_init not in mae_lib.PRED_INITS:
    raise UsageError(f"model.pred_init={pred_init!r}; choose one of "
                     f"{sorted(mae_lib.PRED_INITS)}")
  if pred_init != "xavier" and name == "channel_mae":
    raise UsageError(f"model.pred_init={pred_init!r}: channel_mae's per-channel decoder has "
                     "no such option (model.pred_init='xavier')")
  kwargs = dict(variant=m.variant, patch=m.patch, channels=int(image_shape[-1]),
                mask_ratio=m.mask_ratio, norm_pix_loss=m.norm_pix_loss, dtype=jnp.dtype(m.dtype),
                drop_path=drop_path, attention=attention.check_impl(m.get("attention", "auto")),
                dec_depth=dec_depth, pred_init=pred_init)
  if pred_dim:
    kwargs["pred_dim"] = int(pred_dim)
    # these decoders predict pixels by construction (per channel; decoded to storage)
    if name == "channel_mae" or int(m.get("latents", 0)):
      raise UsageError(f"task.target needs a decoder output of width {pred_dim}; "
                       f"{'the compressive MAE' if name == 'mae' else repr(name)} predicts "
                       "pixels only (task.target='pixels')")
  if m.get("tokens", "dense") == "sparse":
    if name != "mae":
      raise UsageError(f"model.tokens='sparse' is the ViT MAE's mode; {name!r} convolves "
                       "across patches and needs the dense image (model.tokens='dense')")
    latents = int(m.get("latents", 0))
    if latents:  # a real bottleneck: K latents, decoder sees nothing else (models/compressive.py)
      # empty_queries does not apply: the occupancy map is part of the stored record
      return compressive.CompressiveMAE(**kwargs, latents=latents, latent_dim=int(m.get("latent_dim", 0)))
    return sparse.SparseMAE(**kwargs, empty_queries=int(m.get("empty_queries", 0)))
  if int(m.get("latents", 0)):
    raise UsageError(f"model.latents={m.latents} needs model.tokens='sparse' (the compressive "
                     "MAE is a sparse-token model)")
  if m.get("tokens", "dense") not in TOKENS:
    raise UsageError(f"model.tokens={m.tokens!r}; choose one of {TOKENS}")
  return MAE_FAMILY[name](**kwargs)


def build_model(config, image_shape, pred_dim: int = 0):
  """`pred_dim`: the MAE decoder's output width, which the task's target decides
  (experiment.build_model asks it; models sit below tasks); the classifier below never
  builds a decoder, so its backbone keeps the default."""
  m = config.model
  if m.name in MAE_FAMILY:
    return mae_family_model(m.name, m, image_shape, pred_dim=pred_dim)
  if m.name == "classifier":
    backbone = mae_family_model(m.backbone, m, image_shape, m.drop_path)
    return classifier.EncoderClassifier(backbone, num_outputs(config), m.pool, m.head_bn,
                                        m.include_cls, m.get("head_init_std", 0.01))
  if m.name in BASELINES:
    return BASELINES[m.name](num_outputs=num_outputs(config), dtype=jnp.dtype(m.dtype))
  raise UsageError(f"model.name={m.name!r}; choose one of "
                   f"{sorted(MAE_FAMILY) + ['classifier'] + sorted(BASELINES)}")
