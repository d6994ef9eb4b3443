"""ConvMAE (Gao et al. 2022) for detector images: hierarchical conv + transformer MAE.

Two stages of masked convolution blocks, a transformer stage on the coarse token grid,
multi-scale fusion of the stage-1/2 features into the encoder output, the MAE decoder.
Block-wise masking: the random mask is drawn on the final token grid and upsampled to
stages 1 and 2. Masked patches' pixels are zeroed before the first layer
(`zero_masked_input`) and features are multiplied by the visible mask before every
depthwise convolution (its masked convolution), so even without the input zeroing,
visible features would depend on visible pixels only (tests/test_hybrid.py).
`encode()["cls"]` is the mean of the patch tokens (ConvMAE has no CLS token).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mae_jax.models import conv
from mae_jax.models import mae as mae_lib
from mae_jax.models import vit

Dtype = Any

@dataclasses.dataclass(frozen=True)
class ConvMAESize:
  dims: tuple  # widths of stage 1, 2, 3 (stage 3 = transformer)
  depths: tuple  # blocks per stage
  heads: int  # stage-3 attention heads
  mlp_ratio: float = 4.0
  kernel: int = 5  # depthwise conv kernel of the masked conv blocks
  conv_ln_eps: float = conv.SPARSE_LN_EPS  # LayerNorm eps in the conv stages (see conv.SPARSE_LN_EPS)
  dec_width: int = 512
  dec_depth: int = 8
  dec_heads: int = 16

  def decoder_size(self) -> vit.VitSize:
    return vit.VitSize(width=self.dims[2], depth=self.depths[2], heads=self.heads,
                       mlp_ratio=self.mlp_ratio, dec_width=self.dec_width,
                       dec_depth=self.dec_depth, dec_heads=self.dec_heads)


CONVMAE_VARIANTS: dict[str, ConvMAESize] = {
    # matched to ViT tiny (134,504): 134,872 trainable (+0.27%)
    "tiny": ConvMAESize(dims=(8, 40, 64), depths=(2, 2, 1), heads=4,
                        dec_width=32, dec_depth=1, dec_heads=4),
    # matched to the ViT e2e-base budget (4.83M trainable), same decoder
    "e2e-base": ConvMAESize(dims=(32, 96, 128), depths=(2, 2, 14), heads=8,
                            dec_width=128, dec_depth=8, dec_heads=8),
    # ConvMAE-Base of the paper (dims 256/384/768, depths 2/2/11, decoder 512x8)
    "base": ConvMAESize(dims=(256, 384, 768), depths=(2, 2, 11), heads=12),
}


def convmae_strides(patch: int) -> tuple[int, int, int]:
  """Stage strides (s1, s2, s3) with s1*s2*s3 = patch.

  5 -> (1, 5, 1): stage 1 at full pixel resolution, stages 2-3 on the 5x5-pixel
  token grid (25x25 tokens for 125x125); 25 -> (5, 5, 1); 16 -> (4, 2, 2) (the
  paper's 224-pixel setting); 8 -> (2, 2, 2); 4 -> (2, 2, 1).
  """
  f = conv.prime_factors(patch)
  if len(f) <= 1:
    return (1, patch, 1)
  if len(f) == 2:
    return (f[0], f[1], 1)
  return (int(np.prod(f[:-2])), f[-2], f[-1])


class StageEmbed(nn.Module):
  """Non-overlapping conv (kernel = stride) + LayerNorm, as ConvMAE's PatchEmbed."""
  width: int
  stride: int
  dtype: Dtype = jnp.float32
  ln_eps: float = conv.SPARSE_LN_EPS

  @nn.compact
  def __call__(self, x):
    s = self.stride
    x = nn.Conv(self.width, (s, s), strides=s, padding="VALID", kernel_init=conv.conv_init(),
                dtype=self.dtype, name="proj")(x)
    return nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name="norm")(x)


class MaskedConvBlock(nn.Module):
  """ConvMAE's CBlock: x + conv1x1(dwconv(visible * conv1x1(LN x))); x + MLP(LN x).

  `visible` [B, H, W, 1] (1 = visible) multiplies the features right before the
  only spatially mixing op (the depthwise conv), so features at visible
  positions never depend on masked positions.
  """
  mlp_ratio: float = 4.0
  kernel: int = 5
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  ln_eps: float = conv.SPARSE_LN_EPS

  @nn.compact
  def __call__(self, x, visible=None, deterministic: bool = True):
    d = x.shape[-1]
    y = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name="norm1")(x)
    y = nn.Conv(d, (1, 1), kernel_init=conv.conv_init(), dtype=self.dtype, name="conv1")(y)
    if visible is not None:
      y = y * visible.astype(y.dtype)
    # = nn.Conv(d, (k, k), padding="SAME", feature_group_count=d), same parameters
    y = conv.DepthwiseConv(d, self.kernel, dtype=self.dtype, name="dwconv")(y)
    y = nn.Conv(d, (1, 1), kernel_init=conv.conv_init(), dtype=self.dtype, name="conv2")(y)
    x = x + vit.DropPath(self.drop_path)(y, deterministic)
    y = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name="norm2")(x)
    y = vit.Mlp(int(d * self.mlp_ratio), dtype=self.dtype, name="mlp")(y)
    return x + vit.DropPath(self.drop_path)(y, deterministic)


class ConvMAEEncoder(nn.Module):
  """Conv stage 1 -> conv stage 2 -> transformer stage 3 (+ multi-scale fusion).

  `__call__(images, mask, keep)`: `mask` [B, N] at the stage-3 token grid (1 =
  masked) or None; `keep` selects visible tokens [B, N, D] -> [B, visible, D].
  Returns [B, 1 + keep, D]: token 0 is the mean of the other tokens (ConvMAE has
  no CLS token; this slot keeps the MAE latent layout), then the visible tokens.
  """
  size: ConvMAESize
  strides: tuple
  drop_path: float = 0.0  # stochastic depth, rising linearly over all blocks of all stages
  dtype: Dtype = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, images, mask=None, keep=None, deterministic: bool = True):
    s, (s1, s2, s3) = self.size, self.strides
    patch = s1 * s2 * s3
    grid = (images.shape[1] // patch, images.shape[2] // patch)
    vis1 = vis2 = None
    if mask is not None:
      vis1 = 1.0 - mae_lib.pixel_mask(mask, grid, s2 * s3)
      vis2 = 1.0 - mae_lib.pixel_mask(mask, grid, s3)

    rates = iter(np.linspace(0.0, self.drop_path, sum(s.depths)).tolist())
    x1 = StageEmbed(s.dims[0], s1, self.dtype, s.conv_ln_eps, name="stage1_embed")(images)
    for i in range(s.depths[0]):
      x1 = MaskedConvBlock(s.mlp_ratio, s.kernel, next(rates), self.dtype, s.conv_ln_eps,
                           name=f"stage1_block_{i:02d}")(x1, vis1, deterministic)
    x2 = StageEmbed(s.dims[1], s2, self.dtype, s.conv_ln_eps, name="stage2_embed")(x1)
    for i in range(s.depths[1]):
      x2 = MaskedConvBlock(s.mlp_ratio, s.kernel, next(rates), self.dtype, s.conv_ln_eps,
                           name=f"stage2_block_{i:02d}")(x2, vis2, deterministic)
    # Stage 3 tokens; strided projections of stage-1/2 features to the same grid (the
    # fusion). All three are non-overlapping convs inside one final patch: no mixing
    # across final patches.
    x = StageEmbed(s.dims[2], s3, self.dtype, s.conv_ln_eps, name="stage3_embed")(x2)
    f1 = nn.Conv(s.dims[2], (s2 * s3, s2 * s3), strides=s2 * s3, padding="VALID",
                 kernel_init=conv.conv_init(), dtype=self.dtype, name="fuse1")(x1)
    f2 = nn.Conv(s.dims[2], (s3, s3), strides=s3, padding="VALID", kernel_init=conv.conv_init(),
                 dtype=self.dtype, name="fuse2")(x2)
    b = images.shape[0]
    flat = lambda t: t.reshape(b, grid[0] * grid[1], t.shape[-1])  # noqa: E731
    pos = jnp.asarray(vit.sincos_2d(s.dims[2], grid, cls_token=False))
    x, f1, f2 = flat(x) + pos[None].astype(x.dtype), flat(f1), flat(f2)
    if keep is not None:
      x, f1, f2 = keep(x), keep(f1), keep(f2)
    for i in range(s.depths[2]):
      x = vit.Block(s.heads, s.mlp_ratio, next(rates), dtype=self.dtype,
                    attention=self.attention, name=f"block_{i:02d}")(x, deterministic)
    x = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name="norm")(x + f1 + f2)
    return jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)


class ConvMAE(mae_lib.MaskedAutoencoder):
  """Hierarchical ConvMAE (see module doc and docs/models.md).

  `patch` is the final token size on the input (5 or 25 for 125x125); stage
  strides come from `convmae_strides(patch)`.
  """
  zero_masked_input = True

  def decode_size(self):
    return vit.decode_variant(CONVMAE_VARIANTS, self.variant, "ConvMAE")

  def make_encoder(self, size):
    return ConvMAEEncoder(size, convmae_strides(self.patch), drop_path=self.drop_path,
                          dtype=self.dtype, attention=self.attention)

  def make_decoder(self, size):
    return mae_lib.Decoder(size.decoder_size(), self.pred_width(), dtype=self.dtype,
                           attention=self.attention, pred_init=self.pred_init)

  def num_fixed_params(self, image_hw) -> int:
    """Stage-3 sin-cos table (N x D, no CLS row) + decoder table ((1+N) x dec_width)."""
    s, _ = self.decode_size()
    n = (image_hw[0] // self.patch) * (image_hw[1] // self.patch)
    return n * s.dims[2] + (1 + n) * s.dec_width
