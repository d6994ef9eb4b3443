"""Channel-aware MAE: one token per (patch, detector channel).

Each channel of each p x p patch is its own token: a shared linear projection of its
p*p pixels, plus a learned embedding of the channel (track pT, ECAL, HCAL, ...) and
the patch's fixed 2-D sin-cos position, as in ChannelViT-style models. Attention then
mixes sub-detectors and positions alike. For N patches and C channels the encoder sees
C x (visible patches) tokens and the decoder C x N, so attention costs grow with C^2:
at 125x125x8 with patch 5 the decoder attends over 5,000 tokens (patch 25: 200).

Masking is per patch position, shared by its C channel tokens (mask [B, N], the same
`random_masking` as the ViT), so the trainer, the loss, the reconstruction plots and
the leak tests work unchanged: a masked patch hides all of its channels.

Leak guard. The reference channel-former's decoder saw the unmasked patches. Here the
decoder input is built only from (a) the encoder output at visible positions and
(b) one learned mask token (+ position and channel embeddings) at masked positions; it
is sown as `intermediates/decoder/decoder_input` so a test can check that it is
bit-identical whatever the masked pixels hold and that its gradient with respect to
them is exactly 0 (tests/test_channel_mae.py).

Interface as `mae.MAE`: `__call__ -> (loss, aux)` with "pred"/"target" [B, N, p*p*C]
(pixel order of `mae.patchify`), "mask"/"ids_restore" [B, N], "latent"
[B, 1 + C * visible, D]; `encode` -> "cls", "mean" [B, D], "tokens" [B, 1 + C*N, D].
Sizes are the ViT's (`vit.VARIANTS`); the patch projection has p*p inputs instead of
p*p*C and the pixel head p*p outputs, so counts are below the ViT's
(docs/models.md).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.models import mae as mae_lib
from mae_jax.models import vit

Dtype = Any


def channel_tokens(images, patch):
  """[B, H, W, C] -> [B, N, C, p*p]: each channel of each patch, pixels in (row, col) order."""
  b, h, w, c = images.shape
  x = mae_lib.patchify(images, patch).reshape(b, -1, patch * patch, c)
  return jnp.swapaxes(x, 2, 3)


def patches_from_channel_tokens(x):
  """Inverse of `channel_tokens`: [B, N, C, p*p] -> [B, N, p*p*C] in mae.patchify's order."""
  b, n, c, pp = x.shape
  return jnp.swapaxes(x, 2, 3).reshape(b, n, pp * c)


def position_channel_embed(width, grid_hw, channel_table):
  """[N, C, D]: fixed sin-cos of the patch position + learned table of the channel."""
  pos = jnp.asarray(vit.sincos_2d(width, grid_hw, cls_token=False))
  return pos[:, None, :] + channel_table[None, :, :]


class ChannelEncoder(nn.Module):
  size: vit.VitSize
  patch: int
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, images, keep_fn=None, deterministic=True):
    """keep_fn: [B, N, C*D] -> [B, keep, C*D] selects visible positions (None: all)."""
    s = self.size
    b, h, w, c = images.shape
    grid = (h // self.patch, w // self.patch)
    x = nn.Dense(s.width, kernel_init=vit.dense_init, dtype=self.dtype,
                 name="patch_embed")(channel_tokens(images, self.patch))
    table = self.param("channel_embed", nn.initializers.normal(0.02), (c, s.width))
    x = x + position_channel_embed(s.width, grid, table)[None].astype(x.dtype)
    x = x.reshape(b, grid[0] * grid[1], c * s.width)
    if keep_fn is not None:
      x = keep_fn(x)
    x = x.reshape(b, -1, s.width)
    cls = self.param("cls_token", vit.token_init, (1, 1, s.width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, s.width)).astype(x.dtype), x], axis=1)
    rates = np.linspace(0.0, self.drop_path, s.depth) if s.depth > 1 else [self.drop_path]
    for i, r in enumerate(rates):
      x = vit.Block(s.heads, s.mlp_ratio, float(r), dtype=self.dtype, attention=self.attention,
                    name=f"block_{i:02d}")(x, deterministic)
    return nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name="norm")(x)


class ChannelDecoder(nn.Module):
  size: vit.VitSize
  patch: int
  channels: int
  dtype: Dtype = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, latent, ids_restore, grid_hw):
    s, c = self.size, self.channels
    b, n = ids_restore.shape
    x = nn.Dense(s.dec_width, kernel_init=vit.dense_init, dtype=self.dtype, name="embed")(latent)
    visible = x[:, 1:].reshape(b, -1, c, s.dec_width)  # [B, keep, C, dw]
    mask_token = self.param("mask_token", vit.token_init, (1, 1, 1, s.dec_width))
    masked = jnp.broadcast_to(mask_token, (b, n - visible.shape[1], c, s.dec_width))
    tokens = jnp.concatenate([visible, masked.astype(x.dtype)], axis=1)
    tokens = jnp.take_along_axis(tokens, ids_restore[:, :, None, None], axis=1)  # unshuffle
    table = self.param("channel_embed", nn.initializers.normal(0.02), (c, s.dec_width))
    tokens = tokens + position_channel_embed(s.dec_width, grid_hw, table)[None].astype(x.dtype)
    x = jnp.concatenate([x[:, :1], tokens.reshape(b, n * c, s.dec_width)], axis=1)
    self.sow("intermediates", "decoder_input", x)
    for i in range(s.dec_depth):
      x = vit.Block(s.dec_heads, s.mlp_ratio, dtype=self.dtype, attention=self.attention,
                    name=f"block_{i:02d}")(x)
    x = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=self.dtype, name="norm")(x)
    x = nn.Dense(self.patch * self.patch, kernel_init=vit.dense_init, dtype=self.dtype,
                 name="pred")(x[:, 1:])  # [B, N*C, p*p]
    return patches_from_channel_tokens(x.reshape(b, n, c, self.patch * self.patch))


class ChannelMAE(mae_lib.MAE):
  """MAE with one token per (patch, channel); see the module docstring."""

  def setup(self):
    size, patch = vit.parse_variant(self.variant)
    if patch is not None and patch != self.patch:
      raise ValueError(f"variant {self.variant!r} fixes patch {patch} but patch={self.patch}")
    self.size = size
    self.encoder = ChannelEncoder(size, self.patch, drop_path=self.drop_path, dtype=self.dtype,
                                  attention=self.attention)
    self.decoder = ChannelDecoder(size, self.patch, self.channels, dtype=self.dtype,
                                  attention=self.attention)

  def __call__(self, images, noise=None, train: bool = True):
    self._check(images)
    b, h, w, _ = images.shape
    grid = (h // self.patch, w // self.patch)
    if noise is None:
      noise = jax.random.uniform(self.make_rng("masking"), (b, grid[0] * grid[1]))
    masking = {}

    def keep_fn(x):
      x_vis, mask, ids_restore = mae_lib.random_masking(x, self.mask_ratio, noise)
      masking.update(mask=mask.astype(images.dtype), ids_restore=ids_restore)
      return x_vis

    latent = self.encoder(images.astype(self.dtype), keep_fn, deterministic=not train)
    pred = self.decoder(latent, masking["ids_restore"], grid)
    target = mae_lib.patchify(images, self.patch)
    loss = mae_lib.masked_mse(pred, target, masking["mask"], self.norm_pix_loss)
    return loss, {"pred": pred, "mask": masking["mask"], "latent": latent,
                  "ids_restore": masking["ids_restore"], "target": target}

  def encode(self, images, train: bool = False):
    """Unmasked features: "tokens" [B, 1 + N*C, D], "cls" [B, D], "mean" over the N*C tokens."""
    self._check(images)
    tokens = self.encoder(images.astype(self.dtype), None, deterministic=not train)
    return {"cls": tokens[:, 0], "mean": tokens[:, 1:].mean(axis=1), "tokens": tokens}

  def num_fixed_params(self, image_hw) -> int:
    """The sin-cos position tables of encoder and decoder (N x width each, shared by channels)."""
    size, _ = vit.parse_variant(self.variant)
    n = (image_hw[0] // self.patch) * (image_hw[1] // self.patch)
    return n * (size.width + size.dec_width)
