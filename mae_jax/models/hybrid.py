"""Hybrid convolution + transformer masked autoencoders.

Three models with the constructor fields and interface of `mae.MAE`
(`variant, patch, channels, mask_ratio, norm_pix_loss, dtype`):

  `__call__(images, noise=None, train=True) -> (loss, aux)` with aux keys
  "pred" [B, N, p*p*C], "mask" [B, N] (1 = masked), "latent" [B, 1 + visible, D],
  "ids_restore" [B, N], "target" [B, N, p*p*C], where N = (H/p)*(W/p) and p =
  `patch` is the size of the FINAL token on the input image; so the trainer,
  its evaluation and the reconstruction plots work unchanged.
  `encode(images, train=False) -> {"cls", "mean", "tokens"}` (no masking; train=True
  only turns on drop path). The `drop_path` field (stochastic depth, for finetuning) is
  inherited from `MAE`.
  `num_fixed_params(image_hw)`: entries of the fixed sin-cos tables.
  Parameters live under top-level "encoder" and "decoder".

* `DepthwiseMAE`: ViT MAE whose patch embedding is a per-channel grouped
  convolution (k filters per detector channel, kernel = stride = p) followed by
  a linear projection to the width.
* `ConvStemMAE`: ViT MAE whose patch embedding is a convolutional stem (Xiao et
  al. 2021, "Early convolutions help transformers see better"): stride-1 3x3
  convs, then one strided conv per prime factor of p, then a 1x1 projection.
* `ConvMAE`: hierarchical ConvMAE (Gao et al. 2022): two stages of masked
  convolution blocks, a transformer stage on the coarse token grid, multi-scale
  fusion of the stage-1/2 features into the encoder output, MAE decoder.

Leak guarantees (tested in tests/test_hybrid.py): the mask is drawn at the token
grid before anything runs; for every model the pixels of masked patches are set
to 0 before the first layer, so neither a conv stem nor a conv stage can see
masked content, and `latent` and `pred` are bit-identical whatever the masked
pixels hold. ConvMAE in addition multiplies features by the visible mask before
every depthwise convolution (its masked convolution), so even without the input
zeroing, visible features would depend on visible pixels only.

Variant tables are per model (`DEPTHWISE_VARIANTS`, `CONVSTEM_VARIANTS`,
`CONVMAE_VARIANTS`); parameter counts are in docs/models.md. Every family's
`e2e-base` and `tiny` have the ViT MAE's trainable parameter count within 0.5%
(tests/test_hybrid.py).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.models import conv
from mae_jax.models import mae as mae_lib
from mae_jax.models import vit

Dtype = Any

# LayerNorm eps of the per-pixel norms in the conv stem and ConvMAE's conv stages. Most
# pixels of a jet image are empty, so their features are the zero vector (or one constant
# vector), where LayerNorm's Jacobian is scale/sqrt(eps): 1000x per norm at the ViT's 1e-6.
# Stacked over the conv stages this gave step-1 gradient norms of 2e17 (ConvMAE tiny), inf
# (ConvMAE e2e-base) and 4e3 (conv-stem tiny) against the ViT's 0.5. eps = 1 caps the gain
# at |scale| and still normalises features whose channel variance is >> 1; the step-1
# gradient norms then match the ViT's (docs/models.md, tests/test_hybrid.py). ImageNet
# ConvMAE keeps 1e-6: natural images have no exactly-empty regions.
SPARSE_LN_EPS = 1.0

# --------------------------------------------------------------------------- helpers

def parse_hybrid_variant(table: dict, variant: str, model: str):
  """'e2e-base' -> (entry, None); 'e2e-base/5' -> (entry, 5). Unknown names are an error."""
  m = re.fullmatch(r"([A-Za-z0-9_-]+)(?:/(\d+))?", variant or "")
  if not m or m.group(1) not in table:
    raise ValueError(f"Unknown {model} variant {variant!r}; known variants: {sorted(table)} "
                     "(optionally with a patch size, e.g. 'e2e-base/5').")
  return table[m.group(1)], (int(m.group(2)) if m.group(2) else None)


def prime_factors(n: int) -> list[int]:
  """Prime factors in decreasing order: 5 -> [5], 25 -> [5, 5], 16 -> [2, 2, 2, 2]."""
  out, f = [], 2
  while n > 1 and f * f <= n:
    while n % f == 0:
      out.append(f)
      n //= f
    f += 1
  if n > 1:
    out.append(n)
  return sorted(out, reverse=True)


def pixel_mask(mask, grid_hw, scale: int):
  """Token mask [B, gh*gw] -> [B, gh*scale, gw*scale, 1] (each token covers scale x scale)."""
  b = mask.shape[0]
  m = mask.reshape(b, grid_hw[0], 1, grid_hw[1], 1, 1)
  m = jnp.broadcast_to(m, (b, grid_hw[0], scale, grid_hw[1], scale, 1))
  return m.reshape(b, grid_hw[0] * scale, grid_hw[1] * scale, 1)


def zero_masked_pixels(images, mask, patch: int):
  """Sets every pixel of a masked patch (mask 1) to exactly 0."""
  grid = (images.shape[1] // patch, images.shape[2] // patch)
  return jnp.where(pixel_mask(mask, grid, patch) > 0, jnp.zeros((), images.dtype), images)


def draw_mask(mask_ratio: float, noise):
  """(mask [B, N], ids_restore) of `mae.random_masking` from the noise alone."""
  _, mask, ids_restore = mae_lib.random_masking(
      jnp.zeros(noise.shape + (1,), jnp.float32), mask_ratio, noise)
  return mask, ids_restore


# --------------------------------------------------------------------------- ViT-based hybrids

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


class ConvStem(nn.Module):
  """Conv stem with total stride `patch`.

  Stride-1 3x3 convs (widths `stem`), then one strided conv per prime factor f
  of `patch` (kernel = stride = f for f >= 3, e.g. one 5x5 stride-5 conv for
  patch 5; kernel 3 stride 2 'SAME' for f = 2), each conv + LayerNorm + GELU,
  then a 1x1 conv (Dense) to the width, as in Xiao et al. 2021. LayerNorm acts
  per pixel over channels (no batch or spatial statistics), with eps
  `SPARSE_LN_EPS` because most pixels are empty.
  """
  patch: int
  width: int
  stem: tuple
  stem_out: int
  dtype: Dtype = jnp.float32
  ln_eps: float = SPARSE_LN_EPS

  @nn.compact
  def __call__(self, images):
    x = images
    i = 0
    layers = [(w, 3, 1, "SAME") for w in self.stem]
    for f in prime_factors(self.patch):
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


class _EmbedEncoder(vit.Encoder):
  """`vit.Encoder` (same parameter names, same __call__) with another `patch_embed`."""

  def make_patch_embed(self) -> nn.Module:
    raise NotImplementedError

  def setup(self):  # vit.Encoder.setup with the patch embedding swapped
    s = self.size
    self.patch_embed = self.make_patch_embed()
    self.cls_token = self.param("cls_token", vit.token_init, (1, 1, s.width))
    rates = np.linspace(0.0, self.drop_path, s.depth) if s.depth > 1 else [self.drop_path]
    self.blocks = [vit.Block(s.heads, s.mlp_ratio, float(r), dtype=self.dtype,
                             attention=self.attention, name=f"block_{i:02d}")
                   for i, r in enumerate(rates)]
    self.norm = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype)


class DepthwiseEncoder(_EmbedEncoder):
  filters_per_channel: int = 16

  def make_patch_embed(self):
    return DepthwiseEmbed(self.patch, self.size.width, self.filters_per_channel, dtype=self.dtype)


class ConvStemEncoder(_EmbedEncoder):
  stem: tuple = (32, 64)
  stem_out: int = 128

  def make_patch_embed(self):
    return ConvStem(self.patch, self.size.width, tuple(self.stem), self.stem_out, dtype=self.dtype)


def masked_inputs(model, images, noise):
  """Shared start of the hybrids' forward pass: draw the mask, zero masked pixels.

  Returns (grid, mask [B, N], ids_restore, images with masked patches zeroed,
  keep(x) selecting the visible tokens with the same noise).
  """
  model._check(images)
  b, h, w, _ = images.shape
  grid = (h // model.patch, w // model.patch)
  if noise is None:
    noise = jax.random.uniform(model.make_rng("masking"), (b, grid[0] * grid[1]))
  mask, ids_restore = draw_mask(model.mask_ratio, noise)
  visible = zero_masked_pixels(images.astype(model.dtype), mask, model.patch)

  def keep(x):  # the same selection as draw_mask (same noise)
    return mae_lib.random_masking(x, model.mask_ratio, noise)[0]

  return grid, mask, ids_restore, visible, keep


def loss_and_aux(model, images, latent, pred, mask, ids_restore):
  """Masked-patch loss and the aux dict of the MAE interface."""
  target = mae_lib.patchify(images, model.patch)
  mask = mask.astype(images.dtype)
  loss = mae_lib.masked_mse(pred, target, mask, model.norm_pix_loss)
  return loss, {"pred": pred, "mask": mask, "latent": latent, "ids_restore": ids_restore,
                "target": target}


class _ZeroMaskedMAE(mae_lib.MAE):
  """MAE whose encoder gets the image with masked patches' pixels set to 0.

  Subclasses set `self.size` (a vit.VitSize for the decoder and the position
  tables), `self.encoder` (called as `encoder(images, keep_fn, deterministic)`
  returning (latent [B, 1+keep, D], aux)) and `self.decoder` in `setup`.
  """

  def _variant_patch(self, fixed):
    if fixed is not None and fixed != self.patch:
      raise ValueError(f"variant {self.variant!r} fixes patch {fixed} but patch={self.patch}")

  def __call__(self, images, noise=None, train: bool = True):
    grid, mask, ids_restore, visible, keep = masked_inputs(self, images, noise)
    latent, _ = self.encoder(visible, lambda x: (keep(x), {}), deterministic=not train)
    return loss_and_aux(self, images, latent, self.decoder(latent, ids_restore, grid), mask,
                        ids_restore)

  def num_fixed_params(self, image_hw) -> int:
    n = 1 + (image_hw[0] // self.patch) * (image_hw[1] // self.patch)
    return n * (self._size().width + self._size().dec_width)


# name -> (ViT sizes, filters per detector channel)
DEPTHWISE_VARIANTS: dict[str, tuple[vit.VitSize, int]] = {
    "tiny": (vit.VARIANTS["tiny"], 18),  # 134,664 trainable: ViT tiny +0.12%
    "small-e2e": (vit.VARIANTS["small-e2e"], 8),
    "e2e-base": (vit.VARIANTS["e2e-base"], 16),  # the reference's 16 filters per channel
    "base": (vit.VARIANTS["B"], 16),
}


class DepthwiseMAE(_ZeroMaskedMAE):
  """ViT MAE with a per-channel grouped-conv patch embedding (see module doc)."""

  def _size(self):
    return parse_hybrid_variant(DEPTHWISE_VARIANTS, self.variant, "DepthwiseMAE")[0][0]

  def setup(self):
    (size, k), fixed = parse_hybrid_variant(DEPTHWISE_VARIANTS, self.variant, "DepthwiseMAE")
    self._variant_patch(fixed)
    self.size = size
    self.encoder = DepthwiseEncoder(size, self.patch, drop_path=self.drop_path,
                                    filters_per_channel=k, dtype=self.dtype,
                                    attention=self.attention)
    self.decoder = mae_lib.Decoder(size, self.patch * self.patch * self.channels, dtype=self.dtype,
                                   attention=self.attention)


# name -> (ViT sizes, stride-1 stem widths, width of the strided stem convs).
# e2e-base drops one encoder block (16 -> 15) to pay for the stem, as Xiao et al. do.
CONVSTEM_VARIANTS: dict[str, tuple[vit.VitSize, tuple, int]] = {
    "tiny": (vit.VARIANTS["tiny"], (8, 16), 24),  # 134,664 trainable: ViT tiny +0.12%
    "small-e2e": (vit.VARIANTS["small-e2e"], (24, 48), 96),
    "e2e-base": (dataclasses.replace(vit.VARIANTS["e2e-base"], depth=15), (32, 64), 128),
    "base": (dataclasses.replace(vit.VARIANTS["B"], depth=11), (64, 128, 256), 512),
}


class ConvStemMAE(_ZeroMaskedMAE):
  """ViT MAE with a convolutional stem as patch embedding (see module doc)."""

  def _size(self):
    return parse_hybrid_variant(CONVSTEM_VARIANTS, self.variant, "ConvStemMAE")[0][0]

  def setup(self):
    (size, stem, stem_out), fixed = parse_hybrid_variant(CONVSTEM_VARIANTS, self.variant,
                                                         "ConvStemMAE")
    self._variant_patch(fixed)
    self.size = size
    self.encoder = ConvStemEncoder(size, self.patch, drop_path=self.drop_path, stem=stem,
                                   stem_out=stem_out, dtype=self.dtype, attention=self.attention)
    self.decoder = mae_lib.Decoder(size, self.patch * self.patch * self.channels, dtype=self.dtype,
                                   attention=self.attention)


# --------------------------------------------------------------------------- ConvMAE

@dataclasses.dataclass(frozen=True)
class ConvMAESize:
  dims: tuple  # widths of stage 1, 2, 3 (stage 3 = transformer)
  depths: tuple  # blocks per stage
  heads: int  # stage-3 attention heads
  mlp_ratio: float = 4.0
  kernel: int = 5  # depthwise conv kernel of the masked conv blocks
  conv_ln_eps: float = SPARSE_LN_EPS  # LayerNorm eps in the conv stages (see SPARSE_LN_EPS)
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
  f = prime_factors(patch)
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
  ln_eps: float = SPARSE_LN_EPS

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
  ln_eps: float = SPARSE_LN_EPS

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

  `__call__(images, mask, keep_fn)`: `mask` [B, N] at the stage-3 token grid (1 =
  masked) or None; `keep_fn` selects visible tokens [B, N, D] -> [B, keep, D].
  Returns [B, 1 + keep, D]: token 0 is the mean of the other tokens (ConvMAE has
  no CLS token; this slot keeps the MAE latent layout), then the visible tokens.
  """
  size: ConvMAESize
  strides: tuple
  drop_path: float = 0.0  # stochastic depth, rising linearly over all blocks of all stages
  dtype: Dtype = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, images, mask=None, keep_fn=None, deterministic: bool = True):
    s, (s1, s2, s3) = self.size, self.strides
    patch = s1 * s2 * s3
    grid = (images.shape[1] // patch, images.shape[2] // patch)
    vis1 = vis2 = None
    if mask is not None:
      vis1 = 1.0 - pixel_mask(mask, grid, s2 * s3)
      vis2 = 1.0 - pixel_mask(mask, grid, s3)

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
    if keep_fn is not None:
      x, f1, f2 = keep_fn(x), keep_fn(f1), keep_fn(f2)
    for i in range(s.depths[2]):
      x = vit.Block(s.heads, s.mlp_ratio, next(rates), dtype=self.dtype,
                    attention=self.attention, name=f"block_{i:02d}")(x, deterministic)
    x = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name="norm")(x + f1 + f2)
    return jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)


class ConvMAE(mae_lib.MAE):
  """Hierarchical ConvMAE for detector images (see module doc and docs/models.md).

  `patch` is the final token size on the input (5 or 25 for 125x125); stage
  strides come from `convmae_strides(patch)`. Block-wise masking: the random
  mask is drawn on the final token grid and upsampled to stages 1 and 2.
  `encode()["cls"]` is the mean of the patch tokens (no CLS token), equal to
  "mean".
  """

  def _size(self):
    return parse_hybrid_variant(CONVMAE_VARIANTS, self.variant, "ConvMAE")[0]

  def setup(self):
    size, fixed = parse_hybrid_variant(CONVMAE_VARIANTS, self.variant, "ConvMAE")
    if fixed is not None and fixed != self.patch:
      raise ValueError(f"variant {self.variant!r} fixes patch {fixed} but patch={self.patch}")
    self.size = size
    self.encoder = ConvMAEEncoder(size, convmae_strides(self.patch), drop_path=self.drop_path,
                                  dtype=self.dtype, attention=self.attention)
    self.decoder = mae_lib.Decoder(size.decoder_size(), self.patch * self.patch * self.channels,
                                   dtype=self.dtype, attention=self.attention)

  def __call__(self, images, noise=None, train: bool = True):
    grid, mask, ids_restore, visible, keep = masked_inputs(self, images, noise)
    latent = self.encoder(visible, mask, keep, deterministic=not train)
    return loss_and_aux(self, images, latent, self.decoder(latent, ids_restore, grid), mask,
                        ids_restore)

  def encode(self, images, train: bool = False):
    """Unmasked features: "tokens" [B, 1+N, D] (token 0 = mean), "cls" = "mean" = mean pool.

    `train=True` only turns on drop path (finetuning); there is no masking here.
    """
    self._check(images)
    tokens = self.encoder(images.astype(self.dtype), None, None, deterministic=not train)
    return {"cls": tokens[:, 0], "mean": tokens[:, 1:].mean(axis=1), "tokens": tokens}

  def num_fixed_params(self, image_hw) -> int:
    """Stage-3 sin-cos table (N x D, no CLS row) + decoder table ((1+N) x dec_width)."""
    s = self._size()
    n = (image_hw[0] // self.patch) * (image_hw[1] // self.patch)
    return n * s.dims[2] + (1 + n) * s.dec_width


# Suggested registry for trainer.build_model (config.model.name -> class).
MODELS = {"mae": mae_lib.MAE, "depthwise_mae": DepthwiseMAE, "convstem_mae": ConvStemMAE,
          "convmae": ConvMAE}
