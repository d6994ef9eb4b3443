"""Vision Transformer building blocks and the variant table.

Parameter names are stable (they are the export contract): an encoder holds
`patch_embed`, `cls_token`, `block_00` ... `block_NN`, `norm`; a block holds
`norm1`, `attn/qkv`, `attn/proj`, `norm2`, `mlp/fc1`, `mlp/fc2`.

Attention uses one fused qkv `Dense` and a [batch, tokens, heads, head_dim]
layout (on XLA:CPU about twice as fast as `nn.MultiHeadDotProductAttention`);
the softmax attention itself is `models.attention.dot_product_attention`,
which picks a fused kernel per backend.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.errors import UsageError
from mae_jax.models import attention as attention_lib

Dtype = Any

# Initialisers of the MAE reference (He et al. 2021): xavier-uniform linears,
# zero biases, N(0, 0.02) tokens.
dense_init = nn.initializers.xavier_uniform()
token_init = nn.initializers.normal(stddev=0.02)
LN_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class VitSize:
  """Widths and depths of one encoder + decoder pair."""
  width: int
  depth: int
  heads: int
  mlp_ratio: float = 4.0
  dec_width: int = 512
  dec_depth: int = 8
  dec_heads: int = 16


# Sizes by variant name. `e2e-base` is the reference Base MAE for 125x125x8
# (4,987,592 parameters with its two fixed position tables).
VARIANTS: dict[str, VitSize] = {
    "tiny": VitSize(width=64, depth=2, heads=4, dec_width=32, dec_depth=1, dec_heads=4),
    "small-e2e": VitSize(width=96, depth=6, heads=4, dec_width=64, dec_depth=2, dec_heads=4),
    "e2e-base": VitSize(width=128, depth=16, heads=8, dec_width=128, dec_depth=8, dec_heads=8),
    "S": VitSize(width=384, depth=12, heads=6),
    "B": VitSize(width=768, depth=12, heads=12),
    "L": VitSize(width=1024, depth=24, heads=16),
}


def decode_variant(table: dict, variant: str, family: str = "model"):
  """'B' -> (table['B'], None); 'B/5' -> (table['B'], patch 5). Unknown names are an error.

  The one parser of variant strings: every model family keeps its own table of sizes.
  """
  m = re.fullmatch(r"([A-Za-z0-9_-]+)(?:/(\d+))?", variant or "")
  if not m or m.group(1) not in table:
    raise UsageError(
        f"Unknown {family} variant {variant!r}; known variants: {sorted(table)} "
        "(optionally with a patch size, e.g. 'e2e-base/5').")
  return table[m.group(1)], (int(m.group(2)) if m.group(2) else None)


def parse_variant(variant: str) -> tuple[VitSize, int | None]:
  """ViT sizes of `variant` (see `decode_variant`)."""
  return decode_variant(VARIANTS, variant, "model")


def check_variant_patch(variant: str, fixed: int | None, patch: int) -> None:
  """A variant like 'B/16' fixes the patch; a different `patch` is an error."""
  if fixed is not None and fixed != patch:
    raise UsageError(f"variant {variant!r} fixes patch {fixed} but patch={patch}")


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """1-D sin-cos embedding of positions `pos` (float64), as in the MAE code."""
  if dim % 2:
    raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
  omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
  omega = 1.0 / 10000**omega
  out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_hw: tuple[int, int], cls_token: bool = True) -> np.ndarray:
  """Fixed 2-D sin-cos table [1 + h*w, dim] (first row zeros for CLS).

  Follows MAE's `get_2d_sincos_pos_embed`: half the width encodes the column
  (w) coordinate, half the row (h) coordinate; works for non-square grids.
  """
  if dim % 4:
    raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
  gh, gw = grid_hw
  grid_w, grid_h = np.meshgrid(np.arange(gw, dtype=np.float64),
                               np.arange(gh, dtype=np.float64))
  emb = np.concatenate([sincos_1d(dim // 2, grid_w), sincos_1d(dim // 2, grid_h)], axis=1)
  if cls_token:
    emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
  return emb.astype(np.float32)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection.

  `impl` picks the softmax-attention kernel (see `models.attention`); it does not
  change parameters or results beyond float round-off.
  """
  heads: int
  dtype: Dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, lengths=None):
    """x [B, T, D]; `lengths` [B]: real tokens per row (padding last), see models.attention."""
    b, t, d = x.shape
    if d % self.heads:
      raise ValueError(f"width {d} is not divisible by {self.heads} heads")
    qkv = nn.Dense(3 * d, kernel_init=dense_init, dtype=self.dtype, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(b, t, 3, self.heads, d // self.heads), 3, axis=2)
    y = attention_lib.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], impl=self.impl,
                                            lengths=lengths)
    return nn.Dense(d, kernel_init=dense_init, dtype=self.dtype, name="proj")(y.reshape(b, t, d))


class Mlp(nn.Module):
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = nn.Dense(self.hidden, kernel_init=dense_init, dtype=self.dtype, name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(d, kernel_init=dense_init, dtype=self.dtype, name="fc2")(x)


class DropPath(nn.Module):
  """Stochastic depth per sample (identity when deterministic or rate 0)."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


class Block(nn.Module):
  """Pre-norm transformer block."""
  heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, deterministic: bool = True, lengths=None):
    d = x.shape[-1]
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm1")(x)
    y = Attention(self.heads, dtype=self.dtype, impl=self.attention, name="attn")(y, lengths)
    x = x + DropPath(self.drop_path)(y, deterministic)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(d * self.mlp_ratio), dtype=self.dtype, name="mlp")(y)
    return x + DropPath(self.drop_path)(y, deterministic)


class PatchEmbed(nn.Module):
  """Linear patch embedding as a stride-p convolution (kernel [p, p, C, D])."""
  patch: int
  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    # xavier-uniform over the flattened [p*p*C, D] view, as MAE does.
    init = nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1)
    x = nn.Conv(self.width, (self.patch, self.patch), strides=self.patch, padding="VALID",
                kernel_init=init, dtype=self.dtype, name="proj")(images)
    b, gh, gw, d = x.shape
    return x.reshape(b, gh * gw, d)


def drop_path_rates(rate: float, depth: int) -> list[float]:
  """Stochastic depth rising linearly over the blocks, 0 for the first."""
  return np.linspace(0.0, rate, depth).tolist() if depth > 1 else [rate] * depth


class Encoder(nn.Module):
  """ViT encoder with CLS token and fixed sin-cos position embeddings.

  `__call__(images, mask, keep)` embeds all patches (`make_patch_embed`, a linear
  patch embedding here; the hybrids swap it), adds positions, lets `keep` (the MAE
  masking: [B, N, D] -> [B, visible, D]) select the visible tokens, prepends CLS
  and runs the blocks: the encoder only ever sees visible tokens. `mask` (1 =
  masked, [B, N]) is part of the encoder interface for models that mask inside
  the encoder (ConvMAE); the ViT needs only `keep`.
  """
  size: VitSize
  patch: int
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  attention: str = "auto"

  def make_patch_embed(self) -> nn.Module:
    return PatchEmbed(self.patch, self.size.width, dtype=self.dtype)

  def setup(self):
    s = self.size
    self.patch_embed = self.make_patch_embed()
    self.cls_token = self.param("cls_token", token_init, (1, 1, s.width))
    self.blocks = [Block(s.heads, s.mlp_ratio, r, dtype=self.dtype, attention=self.attention,
                         name=f"block_{i:02d}")
                   for i, r in enumerate(drop_path_rates(self.drop_path, s.depth))]
    self.norm = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype)

  def __call__(self, images, mask=None, keep=None, deterministic: bool = True):
    del mask  # the ViT drops masked tokens with `keep`
    h, w = images.shape[1] // self.patch, images.shape[2] // self.patch
    x = self.patch_embed(images)
    pos = jnp.asarray(sincos_2d(self.size.width, (h, w)))
    x = x + pos[None, 1:].astype(x.dtype)
    if keep is not None:
      x = keep(x)
    return self._blocks(x, pos, deterministic)

  def encode_tokens(self, pixels, positions, lengths, grid_hw, deterministic: bool = True):
    """The encoder on a padded list of patches (the sparse-token MAE).

    pixels [B, T, p*p*C] (`mae.patchify` order), positions [B, T] their patch indices
    on the grid `grid_hw`, lengths [B] real tokens per row (padding last). Same
    parameters and, on the same tokens, the same result as `__call__`: the linear
    patch embedding of one patch is the stride-p convolution over it. Returns
    [B, 1 + T, D]; rows t > lengths[b] are padding (CLS is row 0).
    """
    b, t, _ = pixels.shape
    c = pixels.shape[-1] // (self.patch * self.patch)
    x = self.patch_embed(pixels.reshape(b * t, self.patch, self.patch, c)).reshape(b, t, -1)
    pos = jnp.asarray(sincos_2d(self.size.width, grid_hw))
    x = x + jnp.take(pos, 1 + positions, axis=0).astype(x.dtype)
    return self._blocks(x, pos, deterministic, lengths=1 + lengths)

  def _blocks(self, x, pos, deterministic, lengths=None):
    """CLS (+ its position) first, then the blocks and the final norm."""
    cls = jnp.broadcast_to(self.cls_token + pos[None, :1], (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls.astype(x.dtype), x], axis=1)
    for blk in self.blocks:
      x = blk(x, deterministic, lengths)
    return self.norm(x)
