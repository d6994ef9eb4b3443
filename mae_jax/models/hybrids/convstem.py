"""ConvStemMAE: the ViT MAE with a convolutional stem as patch embedding.

Xiao et al. 2021, "Early convolutions help transformers see better": stride-1 3x3
convs, then one strided conv per prime factor of p, then a 1x1 projection. The stem's
convolutions span patches, so masked patches' pixels are zeroed before it
(`zero_masked_input`): no masked content reaches the encoder.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mae_jax.models import conv
from mae_jax.models import mae as mae_lib
from mae_jax.models import vit

Dtype = Any

class ConvStem(nn.Module):
  """Conv stem with total stride `patch`.

  Stride-1 3x3 convs (widths `stem`), then one strided conv per prime factor f
  of `patch` (kernel = stride = f for f >= 3, e.g. one 5x5 stride-5 conv for
  patch 5; kernel 3 stride 2 'SAME' for f = 2), each conv + LayerNorm + GELU,
  then a 1x1 conv (Dense) to the width, as in Xiao et al. 2021. LayerNorm acts
  per pixel over channels (no batch or spatial statistics), with eps
  `conv.SPARSE_LN_EPS` because most pixels are empty.
  """
  patch: int
  width: int
  stem: tuple
  stem_out: int
  dtype: Dtype = jnp.float32
  ln_eps: float = conv.SPARSE_LN_EPS

  @nn.compact
  def __call__(self, images):
    x = images
    i = 0
    layers = [(w, 3, 1, "SAME") for w in self.stem]
    for f in conv.prime_factors(self.patch):
      layers.append((self.stem_out, max(f, 3), f, "VALID" if f >= 3 else "SAME"))
    for w, k, s, pad in layers:
      x = nn.Conv(w, (k, k), strides=s, padding=pad, use_bias=False,
                  kernel_init=conv.conv_init(), dtype=self.dtype, name=f"conv_{i}")(x)
      x = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name=f"norm_{i}")(x)
      x = nn.gelu(x, approximate=False)
      i += 1
    x = nn.Dense(self.width, kernel_init=vit.dense_init, dtype=self.dtype, name="proj")(x)
    b, gh, gw, d = x.shape
    return x.reshape(b, gh * gw, d)


class ConvStemEncoder(vit.Encoder):
  stem: tuple = (32, 64)
  stem_out: int = 128

  def make_patch_embed(self):
    return ConvStem(self.patch, self.size.width, tuple(self.stem), self.stem_out, dtype=self.dtype)


# name -> (ViT sizes, stride-1 stem widths, width of the strided stem convs).
# e2e-base drops one encoder block (16 -> 15) to pay for the stem, as Xiao et al. do.
CONVSTEM_VARIANTS: dict[str, tuple[vit.VitSize, tuple, int]] = {
    "tiny": (vit.VARIANTS["tiny"], (8, 16), 24),  # 134,664 trainable: ViT tiny +0.12%
    "small-e2e": (vit.VARIANTS["small-e2e"], (24, 48), 96),
    "e2e-base": (dataclasses.replace(vit.VARIANTS["e2e-base"], depth=15), (32, 64), 128),
    "base": (dataclasses.replace(vit.VARIANTS["B"], depth=11), (64, 128, 256), 512),
}


class ConvStemMAE(mae_lib.MaskedAutoencoder):
  """ViT MAE with a convolutional stem as patch embedding (see module doc)."""
  zero_masked_input = True

  def decode_size(self):
    (size, _, _), fixed = vit.decode_variant(CONVSTEM_VARIANTS, self.variant, "ConvStemMAE")
    return size, fixed

  def make_encoder(self, size):
    (_, stem, stem_out), _ = vit.decode_variant(CONVSTEM_VARIANTS, self.variant, "ConvStemMAE")
    return ConvStemEncoder(size, self.patch, drop_path=self.drop_path, stem=stem,
                           stem_out=stem_out, dtype=self.dtype, attention=self.attention)
