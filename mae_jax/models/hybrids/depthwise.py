"""DepthwiseMAE: the ViT MAE with a per-channel grouped-conv patch embedding.

Each detector channel gets its own k filters (kernel = stride = p, the reference's
depthwise patch embedding with 16 filters per channel), then a linear projection to
the width. Everything else is the ViT MAE; masked patches' pixels are zeroed before
the embedding (`zero_masked_input`), so nothing of them reaches the encoder.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mae_jax.models import conv
from mae_jax.models import mae as mae_lib
from mae_jax.models import vit

Dtype = Any

class DepthwiseEmbed(nn.Module):
  """Per-channel grouped conv (k filters per channel, kernel = stride = p), then Dense(width)."""
  patch: int
  width: int
  filters_per_channel: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    c = images.shape[-1]
    # = nn.Conv(C*k, (p, p), strides=p, feature_group_count=C), same parameters (models/conv.py)
    x = conv.PatchGroupedConv(c * self.filters_per_channel, self.patch, dtype=self.dtype,
                              name="dwconv")(images)
    x = nn.Dense(self.width, kernel_init=vit.dense_init, dtype=self.dtype, name="proj")(x)
    b, gh, gw, d = x.shape
    return x.reshape(b, gh * gw, d)


class DepthwiseEncoder(vit.Encoder):
  filters_per_channel: int = 16

  def make_patch_embed(self):
    return DepthwiseEmbed(self.patch, self.size.width, self.filters_per_channel, dtype=self.dtype)


# name -> (ViT sizes, filters per detector channel)
DEPTHWISE_VARIANTS: dict[str, tuple[vit.VitSize, int]] = {
    "tiny": (vit.VARIANTS["tiny"], 18),  # 134,664 trainable: ViT tiny +0.12%
    "small-e2e": (vit.VARIANTS["small-e2e"], 8),
    "e2e-base": (vit.VARIANTS["e2e-base"], 16),  # the reference's 16 filters per channel
    "base": (vit.VARIANTS["B"], 16),
}


class DepthwiseMAE(mae_lib.MaskedAutoencoder):
  """ViT MAE with a per-channel grouped-conv patch embedding (see module doc)."""
  zero_masked_input = True

  def decode_size(self):
    (size, _), fixed = vit.decode_variant(DEPTHWISE_VARIANTS, self.variant, "DepthwiseMAE")
    return size, fixed

  def make_encoder(self, size):
    (_, k), _ = vit.decode_variant(DEPTHWISE_VARIANTS, self.variant, "DepthwiseMAE")
    return DepthwiseEncoder(size, self.patch, drop_path=self.drop_path, filters_per_channel=k,
                            dtype=self.dtype, attention=self.attention)
