"""Compressive MAE: the sparse-token MAE with a real bottleneck (`model.latents` = K > 0).

Every occupied patch of a jet is a token of the encoder (no masking: the bottleneck, not
masking, is what makes the task hard; `mask_ratio` is unused). Then:

  compress    K learned queries cross-attend to the encoder's tokens (CLS + occupied
              patches; key-padding mask over the padded slots), one Perceiver-style
              block (cross-attention + MLP, pre-norm), projected to `latent_dim`
              (0 = the encoder width): z [B, K, latent_dim]. That is the stored record.
  decompress  one query per occupied patch = the fixed sin-cos embedding of its position
              (+ one learned query token), cross-attending to the K latents (embedded to
              the decoder width) in `dec_depth` blocks of cross-attention + MLP; the queries
              never attend to each other, so a patch's prediction is a function of its
              position and z only. The decoder has no other path to the pixels
              (tests/test_compressive.py: with z held fixed, changing the pixels changes
              nothing).
  loss        the task's, over ALL occupied patches (aux "slot_mask" = every real slot).
              `model.empty_queries` is ignored: the occupancy map is part of the record.

Initialisation: the decoder's output projection starts at zero, so the untrained model
predicts empty patches and its loss starts at the predict-zeros baseline. With the ViT's
Xavier init there instead (dec_width 32 -> 200 pixel values, weights of std 0.09) the tiny
model's first predictions have std ≈ 0.4 in log1p units: loss 0.31-0.34 against 0.022 for
predicting zeros on 16 simulated top/QCD jets (benchmarks/compression_floors.py). Adam
moves a weight by at most ≈ lr a step, and the 200-step smoke run of docs/physics.md (peak
3.1e-4) summed to ≈ 0.03: too little to cancel that noise, and it ended worse than
predicting zeros; with the zero init the same run ends 12% below them.

Budget: bytes per jet = K × latent_dim × bytes per value (2 when z is stored as float16,
as the `compression` protocol stage stores it), PLUS the occupancy map the decoder is
told (which patches to reconstruct): ceil(N / 8) bytes as a bitmap (79 for 625 patches).
`occupancy_bytes` gives that term; the protocol stage reports both.

`__call__` returns `(pred, aux)` as SparseMAE does (pred at the token slots, aux "pred" /
"mask" on the grid, "slot_ids", "slot_mask"), plus aux "z". `encode` is SparseMAE's (the
encoder's tokens, for probes) plus "latents".
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from mae_jax.models import mae as mae_lib
from mae_jax.models import sparse, vit


def occupancy_bytes(n_patches: int) -> int:
  """Bytes of the occupied-patch bitmap the decoder is given besides z."""
  return math.ceil(n_patches / 8)


class CrossBlock(nn.Module):
  """Pre-norm cross-attention (queries x -> keys/values y) + MLP, residual on x.
  `kv_valid` [B, Tk] bool: which keys are real (None = all)."""
  heads: int
  mlp_ratio: float = 4.0
  dtype: vit.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, y, kv_valid=None):
    d = x.shape[-1]
    mask = None if kv_valid is None else kv_valid[:, None, None, :]  # [B, 1, 1, Tk]
    q = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name="norm_q")(x)
    kv = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name="norm_kv")(y)
    x = x + nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, kernel_init=vit.dense_init, name="attn")(
            q, kv, mask=mask)
    h = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name="norm2")(x)
    return x + vit.Mlp(int(d * self.mlp_ratio), dtype=self.dtype, name="mlp")(h)


class Bottleneck(nn.Module):
  """Encoder tokens [B, T, D] (+ valid [B, T]) -> z [B, K, latent_dim]."""
  latents: int
  latent_dim: int
  heads: int
  dtype: vit.Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, valid):
    b, _, d = tokens.shape
    queries = self.param("queries", vit.token_init, (1, self.latents, d))
    x = jnp.broadcast_to(queries, (b, self.latents, d)).astype(tokens.dtype)
    x = CrossBlock(self.heads, dtype=self.dtype, name="cross")(x, tokens, valid)
    x = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name="norm")(x)
    return nn.Dense(self.latent_dim or d, kernel_init=vit.dense_init, dtype=self.dtype,
                    name="proj")(x)


class LatentDecoder(nn.Module):
  """z [B, K, Dz] and the patches to predict (`positions` [B, S] grid indices) -> [B, S, out]."""
  size: vit.VitSize
  out_dim: int
  dtype: vit.Dtype = jnp.float32

  @nn.compact
  def __call__(self, z, positions, grid_hw):
    s = self.size
    kv = nn.Dense(s.dec_width, kernel_init=vit.dense_init, dtype=self.dtype, name="embed")(z)
    pos = jnp.asarray(vit.sincos_2d(s.dec_width, grid_hw))
    query = self.param("query_token", vit.token_init, (1, 1, s.dec_width))
    x = (jnp.take(pos, 1 + positions, axis=0) + query).astype(kv.dtype)
    for i in range(s.dec_depth):
      x = CrossBlock(s.dec_heads, s.mlp_ratio, dtype=self.dtype, name=f"block_{i:02d}")(x, kv)
    x = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name="norm")(x)
    # zero-initialised: the untrained decoder predicts empty patches, the loss starts at the
    # predict-zeros baseline (module doc, "Initialisation")
    return nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                    name="pred")(x)


class CompressiveMAE(sparse.SparseMAE):
  """Sparse-token MAE whose decoder sees the jet only through K latents (module doc)."""
  latents: int = 8
  latent_dim: int = 0  # 0 = the encoder width

  def setup(self):
    super().setup()
    if self.latents <= 0:
      raise ValueError(f"model.latents={self.latents}: the compressive MAE needs K >= 1")
    if self.empty_queries:  # the registry never passes it (the config's is ignored)
      raise ValueError("empty_queries does not apply to the compressive MAE: the decoder is "
                       "told which patches are occupied (the occupancy map is stored)")
    self.bottleneck = Bottleneck(self.latents, self.latent_dim, self.size.heads,
                                 dtype=self.dtype)
    self.latent_decoder = LatentDecoder(self.size, self.patch * self.patch * self.channels,
                                        dtype=self.dtype)

  def make_decoder(self, size):
    return None  # replaced by `latent_decoder` (no mask tokens, no access to the encoder)

  def compress(self, images, patch_ids=None, train: bool = False):
    """z [B, K, latent_dim] of every jet, and its occupied patch_ids [B, T]."""
    self._check(images)
    grid = (images.shape[1] // self.patch, images.shape[2] // self.patch)
    pixels, patch_ids, valid, n = self._tokens(images.astype(self.dtype), patch_ids)
    tokens = self.encoder.encode_tokens(pixels, jnp.maximum(patch_ids, 0), n, grid,
                                        deterministic=not train)
    kv_valid = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)  # CLS is real
    return self.bottleneck(tokens, kv_valid), patch_ids

  def decompress(self, z, patch_ids, grid_hw):
    """Predicted patches [B, T, p*p*C] at `patch_ids` (0 at padding) from z alone."""
    pred = self.latent_decoder(z, jnp.maximum(patch_ids, 0), grid_hw)
    return jnp.where((patch_ids >= 0)[..., None], pred, 0)

  def __call__(self, images, noise=None, train: bool = True, patch_ids=None):
    del noise  # no masking
    grid = (images.shape[1] // self.patch, images.shape[2] // self.patch)
    z, patch_ids = self.compress(images, patch_ids, train)
    pred = self.decompress(z, patch_ids, grid)
    valid = patch_ids >= 0
    n_patches = grid[0] * grid[1]
    aux = {"pred": sparse.scatter_patches(pred, patch_ids, n_patches),
           "mask": sparse.scatter_patches(valid.astype(images.dtype), patch_ids, n_patches),
           "slot_ids": patch_ids, "slot_mask": valid, "z": z, "patch_ids": patch_ids}
    return pred, aux

  def encode(self, images, train: bool = False, patch_ids=None):
    out = super().encode(images, train, patch_ids)
    out["latents"] = self.compress(images, patch_ids, train)[0]
    return out


def bytes_per_jet(latents: int, latent_dim: int, value_bytes: int = 2) -> int:
  """Bytes of z alone (K × latent_dim × bytes per value; float16 = 2)."""
  return latents * latent_dim * value_bytes
