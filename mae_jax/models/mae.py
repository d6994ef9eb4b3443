"""Masked autoencoder (He et al. 2021) for multi-channel detector images.

`MAE.__call__(images)` returns `(loss, aux)`:
  loss: per-pixel MSE averaged over **masked patches only**;
  aux:  {"pred": [B, N, p*p*C], "mask": [B, N] (1 = masked), "latent": encoder
         output [B, 1 + visible, D], "ids_restore": [B, N], "target": [B, N, p*p*C]}.
`MAE.encode(images)` runs the encoder on all patches (no masking) and returns
{"cls": [B, D], "mean": [B, D] (mean over patch tokens), "tokens": [B, 1+N, D]}.

Randomness: masking noise comes from the "masking" rng stream, or is passed in
as `noise` [B, N] (for parity tests and exact replay).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mae_jax.models import vit

Dtype = Any


def check_image_shape(image_shape, patch: int):
  """Raises a clear error unless `patch` divides both image sides."""
  h, w = image_shape[:2]
  if patch <= 0 or h % patch or w % patch:
    raise ValueError(
        f"patch size {patch} does not divide the image size {h}x{w}; choose a patch "
        f"that divides both sides (for 125x125 images: 5 or 25).")


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], pixel order (row, col, channel) in a patch."""
  b, h, w, c = images.shape
  check_image_shape((h, w), patch)
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  x = jnp.einsum("nhpwqc->nhwpqc", x)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(x: jax.Array, patch: int, grid_hw: tuple[int, int], channels: int) -> jax.Array:
  """Inverse of `patchify`: [B, h*w, p*p*C] -> [B, h*p, w*p, C]."""
  b = x.shape[0]
  gh, gw = grid_hw
  if x.shape[1] != gh * gw or x.shape[2] != patch * patch * channels:
    raise ValueError(f"cannot unpatchify {x.shape} into grid {grid_hw}, patch {patch}, "
                     f"{channels} channels")
  x = x.reshape(b, gh, gw, patch, patch, channels)
  x = jnp.einsum("nhwpqc->nhpwqc", x)
  return x.reshape(b, gh * patch, gw * patch, channels)


def random_masking(x: jax.Array, mask_ratio: float, noise: jax.Array):
  """Per-sample random masking by argsort of uniform noise (MAE).

  Keeps the `int(N * (1 - mask_ratio))` tokens with the smallest noise.
  Returns (x_visible [B, keep, D], mask [B, N] with 1 = masked, ids_restore [B, N]).
  """
  b, n, d = x.shape
  keep = int(n * (1.0 - mask_ratio))
  if not 0 < keep <= n:
    raise ValueError(f"mask_ratio {mask_ratio} leaves {keep} of {n} patches visible")
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  ids_keep = ids_shuffle[:, :keep]
  x_visible = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)
  mask = jnp.ones((b, n), x.dtype).at[:, :keep].set(0.0)
  mask = jnp.take_along_axis(mask, ids_restore, axis=1)
  return x_visible, mask, ids_restore


def patch_stats(target):
  """Per-patch mean and std used by norm_pix_loss.

  The variance is the unbiased one (ddof=1), as torch.var in the MAE reference
  and transformers' ViTMAE, so losses agree with them.
  """
  target = target.astype(jnp.float32)
  mean = target.mean(axis=-1, keepdims=True)
  var = target.var(axis=-1, keepdims=True, ddof=1)
  return mean, (var + 1.0e-6) ** 0.5


def normalize_patches(target):
  mean, std = patch_stats(target)
  return (target.astype(jnp.float32) - mean) / std


def masked_mse(pred, target, mask, norm_pix_loss: bool = False):
  """Mean per-pixel squared error over masked patches (mask 1 = masked)."""
  pred = pred.astype(jnp.float32)
  target = target.astype(jnp.float32)
  if norm_pix_loss:
    target = normalize_patches(target)
  per_patch = jnp.mean((pred - target) ** 2, axis=-1)
  mask = mask.astype(jnp.float32)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class Decoder(nn.Module):
  """Lightweight MAE decoder: embed, insert mask tokens, blocks, predict pixels."""
  size: vit.VitSize
  out_dim: int
  dtype: Dtype = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, latent, ids_restore, grid_hw):
    s = self.size
    x = nn.Dense(s.dec_width, kernel_init=vit.dense_init, dtype=self.dtype, name="embed")(latent)
    mask_token = self.param("mask_token", vit.token_init, (1, 1, s.dec_width))
    b, n = ids_restore.shape
    n_masked = n + 1 - x.shape[1]
    tokens = jnp.concatenate(
        [x[:, 1:], jnp.broadcast_to(mask_token, (b, n_masked, s.dec_width)).astype(x.dtype)], axis=1)
    tokens = jnp.take_along_axis(tokens, ids_restore[:, :, None], axis=1)  # unshuffle
    x = jnp.concatenate([x[:, :1], tokens], axis=1)
    x = x + jnp.asarray(vit.sincos_2d(s.dec_width, grid_hw))[None].astype(x.dtype)
    for i in range(s.dec_depth):
      x = vit.Block(s.dec_heads, s.mlp_ratio, dtype=self.dtype, attention=self.attention,
                    name=f"block_{i:02d}")(x)
    x = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name="norm")(x)
    x = nn.Dense(self.out_dim, kernel_init=vit.dense_init, dtype=self.dtype, name="pred")(x)
    return x[:, 1:]


class MAE(nn.Module):
  """ViT masked autoencoder. Sizes from `variant` (see `vit.VARIANTS`)."""
  variant: str = "tiny"
  patch: int = 5
  channels: int = 8
  mask_ratio: float = 0.75
  norm_pix_loss: bool = False
  dtype: Dtype = jnp.float32
  drop_path: float = 0.0  # stochastic depth in the encoder (finetuning)
  attention: str = "auto"  # softmax-attention kernel, see models/attention.py

  def setup(self):
    size, patch = vit.parse_variant(self.variant)
    if patch is not None and patch != self.patch:
      raise ValueError(f"variant {self.variant!r} fixes patch {patch} but patch={self.patch}")
    self.size = size
    self.encoder = vit.Encoder(size, self.patch, drop_path=self.drop_path, dtype=self.dtype,
                               attention=self.attention)
    self.decoder = Decoder(size, self.patch * self.patch * self.channels, dtype=self.dtype,
                           attention=self.attention)

  def _check(self, images):
    if images.ndim != 4 or images.shape[-1] != self.channels:
      raise ValueError(f"images must be [batch, H, W, {self.channels}] channels-last, "
                       f"got shape {tuple(images.shape)}")
    check_image_shape(images.shape[1:3], self.patch)

  def __call__(self, images, noise=None, train: bool = True):
    self._check(images)
    b, h, w, _ = images.shape
    grid = (h // self.patch, w // self.patch)
    n = grid[0] * grid[1]
    if noise is None:
      noise = jax.random.uniform(self.make_rng("masking"), (b, n))
    masking = {}

    def keep_fn(x):
      x_vis, mask, ids_restore = random_masking(x, self.mask_ratio, noise)
      masking.update(mask=mask, ids_restore=ids_restore)
      return x_vis, {}

    latent, _ = self.encoder(images.astype(self.dtype), keep_fn, deterministic=not train)
    pred = self.decoder(latent, masking["ids_restore"], grid)
    target = patchify(images, self.patch)
    loss = masked_mse(pred, target, masking["mask"], self.norm_pix_loss)
    aux = {"pred": pred, "mask": masking["mask"], "latent": latent,
           "ids_restore": masking["ids_restore"], "target": target}
    return loss, aux

  def encode(self, images, train: bool = False):
    """Features of unmasked images: CLS and mean of patch tokens (after final norm).

    `train=True` only turns on drop path (finetuning); there is no masking here.
    """
    self._check(images)
    tokens, _ = self.encoder(images.astype(self.dtype), None, deterministic=not train)
    return {"cls": tokens[:, 0], "mean": tokens[:, 1:].mean(axis=1), "tokens": tokens}

  def num_fixed_params(self, image_hw) -> int:
    """Entries of the two fixed sin-cos tables (counted by the reference, not trained)."""
    size, _ = vit.parse_variant(self.variant)
    n = 1 + (image_hw[0] // self.patch) * (image_hw[1] // self.patch)
    return n * (size.width + size.dec_width)
