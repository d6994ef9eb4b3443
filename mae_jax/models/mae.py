"""Masked autoencoder (He et al. 2021) for multi-channel detector images.

`MaskedAutoencoder` is the one forward pass of every MAE family (patchify, masking,
encoder on visible tokens, decoder, `encode`); the ViT MAE
(`MAE`, here), the hybrids (`models/hybrids/`) and the channel-aware MAE specialise
only their variant table, encoder and decoder.

`__call__(images)` returns `(pred, aux)` (big_vision's `(output, aux)`; the loss is the
task's, `tasks/mae.py`):
  pred: the decoder's prediction at its query slots [B, S, p*p*C]; here the slots are the
        N patches in order (sparse tokens: `models/sparse.py` adds "slot_ids"); with
        `pred_dim` > 0 the last axis is pred_dim wide instead (code logits, not pixels);
  aux:  {"pred": the prediction on the patch grid [B, N, p*p*C], "mask": [B, N]
         (1 = masked; the slots the loss counts unless aux has "slot_mask"), "latent":
         encoder output [B, 1 + visible, D], "ids_restore": [B, N]}.
`encode(images)` runs the encoder on all patches (no masking) and returns
{"cls": [B, D], "mean": [B, D] (mean over patch tokens), "tokens": [B, 1+N, D]}.

Randomness: masking noise comes from the "masking" rng stream, or is passed in
as `noise` [B, N] (for parity tests and exact replay).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mae_jax.errors import UsageError
from mae_jax.models import vit

Dtype = Any


def check_image_shape(image_shape, patch: int):
  """Raises a clear error unless `patch` divides both image sides."""
  h, w = image_shape[:2]
  if patch <= 0 or h % patch or w % patch:
    raise UsageError(
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


def draw_mask(mask_ratio: float, noise: jax.Array):
  """Per-sample random masking by argsort of uniform noise (MAE).

  Keeps the `int(N * (1 - mask_ratio))` tokens with the smallest noise.
  Returns (mask [B, N] float32 with 1 = masked, ids_restore [B, N], ids_keep [B, keep]).
  """
  b, n = noise.shape
  keep = int(n * (1.0 - mask_ratio))
  if not 0 < keep <= n:
    raise UsageError(f"mask_ratio {mask_ratio} leaves {keep} of {n} patches visible")
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  mask = jnp.ones((b, n), jnp.float32).at[:, :keep].set(0.0)
  mask = jnp.take_along_axis(mask, ids_restore, axis=1)
  return mask, ids_restore, ids_shuffle[:, :keep]


def take_tokens(x: jax.Array, ids: jax.Array) -> jax.Array:
  """x [B, N, ...] -> x[b, ids[b]] [B, K, ...]."""
  ids = ids.reshape(ids.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, ids, axis=1)


def random_masking(x: jax.Array, mask_ratio: float, noise: jax.Array):
  """(x_visible [B, keep, D], mask [B, N] with 1 = masked, ids_restore [B, N])."""
  mask, ids_restore, ids_keep = draw_mask(mask_ratio, noise)
  return take_tokens(x, ids_keep), mask.astype(x.dtype), ids_restore


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


def patch_stats(target):
  """Per-patch mean and std used by norm_pix_loss.

  The variance is the unbiased one (ddof=1), as torch.var in the MAE reference
  and transformers' ViTMAE, so losses agree with them.
  """
  target = target.astype(jnp.float32)
  mean = target.mean(axis=-1, keepdims=True)
  var = target.var(axis=-1, keepdims=True, ddof=1)
  return mean, (var + 1.0e-6) ** 0.5


# The decoder's output layer. "xavier" is the MAE reference's (every Linear xavier-uniform):
# its first predictions have variance ~ 2 * dec_width / (dec_width + p*p*C) per pixel, far
# above a sparse jet's (the untrained loss is many times predict-zeros). "zeros" starts at
# predict-zeros (the bias is zero too), as the compressive decoder does (models/compressive.py).
PRED_INITS = {"xavier": vit.dense_init, "zeros": nn.initializers.zeros}


class Decoder(nn.Module):
  """Lightweight MAE decoder: embed, insert mask tokens, blocks, predict pixels.

  Dense: `latent` [B, 1 + visible, D] (CLS first), `ids_restore` [B, N] puts the
  visible tokens and N - visible mask tokens back in patch order. Sparse tokens
  (`positions` given): the token slots are a padded list of patches, `positions`
  [B, T] their patch indices, `visible` [B] how many of the shuffled slots are
  visible per row (the rest get the mask token), `lengths` [B] real slots per row.
  """
  size: vit.VitSize
  out_dim: int
  dtype: Dtype = jnp.float32
  attention: str = "auto"
  pred_init: str = "xavier"  # the output layer's kernel: see PRED_INITS

  @nn.compact
  def __call__(self, latent, ids_restore, grid_hw, positions=None, visible=None, lengths=None):
    s = self.size
    x = nn.Dense(s.dec_width, kernel_init=vit.dense_init, dtype=self.dtype, name="embed")(latent)
    mask_token = self.param("mask_token", vit.token_init, (1, 1, s.dec_width))
    b, n = ids_restore.shape
    mask_tokens = jnp.broadcast_to(mask_token, (b, n + 1 - x.shape[1], s.dec_width))
    tokens = jnp.concatenate([x[:, 1:], mask_tokens.astype(x.dtype)], axis=1)
    if visible is not None:  # a different number of visible tokens per row
      slot = jnp.arange(n)[None, :, None]
      tokens = jnp.where(slot < visible[:, None, None], tokens, mask_token.astype(x.dtype))
    tokens = jnp.take_along_axis(tokens, ids_restore[:, :, None], axis=1)  # unshuffle
    x = jnp.concatenate([x[:, :1], tokens], axis=1)
    pos = jnp.asarray(vit.sincos_2d(s.dec_width, grid_hw))
    if positions is None:
      x = x + pos[None].astype(x.dtype)
    else:
      x = x + jnp.concatenate([jnp.broadcast_to(pos[None, :1], (b, 1, s.dec_width)),
                               jnp.take(pos, 1 + positions, axis=0)], axis=1).astype(x.dtype)
    attn_lengths = None if lengths is None else 1 + lengths
    for i in range(s.dec_depth):
      x = vit.Block(s.dec_heads, s.mlp_ratio, dtype=self.dtype, attention=self.attention,
                    name=f"block_{i:02d}")(x, lengths=attn_lengths)
    x = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name="norm")(x)
    x = nn.Dense(self.out_dim, kernel_init=PRED_INITS[self.pred_init], dtype=self.dtype,
                 name="pred")(x)
    return x[:, 1:]


class MaskedAutoencoder(nn.Module):
  """The masked-autoencoder base: masking, encoder on visible tokens, decoder.

  A family specialises only what differs: its variant table (`decode_size`), its
  encoder (`make_encoder`; called as `encoder(images, mask, keep, deterministic)`
  and returning [B, 1 + visible, D] with a CLS-like token first), its decoder
  (`make_decoder`), whether masked pixels are zeroed before the encoder
  (`zero_masked_input`: a convolution that spans patches must not see them) and
  its fixed position tables (`num_fixed_params`).
  """
  variant: str = "tiny"
  patch: int = 5
  channels: int = 8
  mask_ratio: float = 0.75
  # what the prediction means (per-patch normalised pixels), for figures and export; the
  # targets themselves are built by the task (tasks/targets.py) from config.model.norm_pix_loss
  norm_pix_loss: bool = False
  dtype: Dtype = jnp.float32
  drop_path: float = 0.0  # stochastic depth in the encoder (finetuning)
  attention: str = "auto"  # softmax-attention kernel, see models/attention.py
  dec_depth: int = 0  # decoder blocks (config model.dec_depth); 0 = the variant's own
  # width of the decoder's `pred` layer: 0 = p*p*C (pixels); the target sets it otherwise
  # (tasks/targets/codes.py: one logit per code), through models/registry.py
  pred_dim: int = 0
  pred_init: str = "xavier"  # the decoder output layer's init (config model.pred_init)

  zero_masked_input = False

  def decode_size(self):
    """(sizes, patch fixed by the variant or None) from the family's variant table."""
    return vit.parse_variant(self.variant)

  def model_size(self):
    """`decode_size` with `dec_depth` applied: the sizes the model is built with."""
    size, fixed_patch = self.decode_size()
    if self.dec_depth:
      size = dataclasses.replace(size, dec_depth=int(self.dec_depth))
    return size, fixed_patch

  def make_encoder(self, size) -> nn.Module:
    return vit.Encoder(size, self.patch, drop_path=self.drop_path, dtype=self.dtype,
                       attention=self.attention)

  def pred_width(self) -> int:
    """Output width per slot: the patch's pixels, or `pred_dim` (e.g. code logits)."""
    return self.pred_dim or self.patch * self.patch * self.channels

  def make_decoder(self, size) -> nn.Module:
    return Decoder(size, self.pred_width(), dtype=self.dtype, attention=self.attention,
                   pred_init=self.pred_init)

  def setup(self):
    size, fixed_patch = self.model_size()
    vit.check_variant_patch(self.variant, fixed_patch, self.patch)
    self.size = size
    self.encoder = self.make_encoder(size)
    self.decoder = self.make_decoder(size)

  def _check(self, images):
    if images.ndim != 4 or images.shape[-1] != self.channels:
      raise ValueError(f"images must be [batch, H, W, {self.channels}] channels-last, "
                       f"got shape {tuple(images.shape)}")
    check_image_shape(images.shape[1:3], self.patch)

  def __call__(self, images, noise=None, train: bool = True):
    self._check(images)
    b, h, w, _ = images.shape
    grid = (h // self.patch, w // self.patch)
    if noise is None:
      noise = jax.random.uniform(self.make_rng("masking"), (b, grid[0] * grid[1]))
    mask, ids_restore, ids_keep = draw_mask(self.mask_ratio, noise)
    x = images.astype(self.dtype)
    if self.zero_masked_input:
      x = zero_masked_pixels(x, mask, self.patch)
    latent = self.encoder(x, mask, lambda t: take_tokens(t, ids_keep), deterministic=not train)
    pred = self.decoder(latent, ids_restore, grid)
    aux = {"pred": pred, "mask": mask.astype(images.dtype), "latent": latent,
           "ids_restore": ids_restore}
    return pred, aux

  def encode(self, images, train: bool = False):
    """Features of unmasked images: token 0 ("cls") and the mean of the patch tokens.

    `train=True` only turns on drop path (finetuning); there is no masking here.
    """
    self._check(images)
    tokens = self.encoder(images.astype(self.dtype), None, None, deterministic=not train)
    return {"cls": tokens[:, 0], "mean": tokens[:, 1:].mean(axis=1), "tokens": tokens}

  def num_fixed_params(self, image_hw) -> int:
    """Entries of the two fixed sin-cos tables (counted by the reference, not trained)."""
    size, _ = self.decode_size()
    n = 1 + (image_hw[0] // self.patch) * (image_hw[1] // self.patch)
    return n * (size.width + size.dec_width)


class MAE(MaskedAutoencoder):
  """ViT masked autoencoder (He et al. 2021). Sizes from `variant` (see `vit.VARIANTS`)."""
