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
them is exactly 0 (tests/test_channel.py).

Interface as `mae.MAE`: `__call__ -> (pred, aux)` with pred, aux "pred" [B, N, p*p*C]
(pixel order of `mae.patchify`), "mask"/"ids_restore" [B, N], "latent"
[B, 1 + C * visible, D]; `encode` -> "cls", "mean" [B, D], "tokens" [B, 1 + C*N, D].
Sizes are the ViT's (`vit.VARIANTS`); the patch projection has p*p inputs instead of
p*p*C and the pixel head p*p outputs, so counts are below the ViT's
(docs/models.md).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

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
  def __call__(self, images, mask=None, keep=None, deterministic=True):
    """keep: [B, N, C*D] -> [B, visible, C*D] selects visible positions (None: all)."""
    del mask  # masked positions are dropped by `keep`
    s = self.size
    b, h, w, c = images.shape
    grid = (h // self.patch, w // self.patch)
    x = nn.Dense(s.width, kernel_init=vit.dense_init, dtype=self.dtype,
                 name="patch_embed")(channel_tokens(images, self.patch))
    table = self.param("channel_embed", nn.initializers.normal(0.02), (c, s.width))
    x = x + position_channel_embed(s.width, grid, table)[None].astype(x.dtype)
    x = x.reshape(b, grid[0] * grid[1], c * s.width)
    if keep is not None:
      x = keep(x)
    x = x.reshape(b, -1, s.width)
    cls = self.param("cls_token", vit.token_init, (1, 1, s.width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, s.width)).astype(x.dtype), x], axis=1)
    for i, r in enumerate(vit.drop_path_rates(self.drop_path, s.depth)):
      x = vit.Block(s.heads, s.mlp_ratio, r, dtype=self.dtype, attention=self.attention,
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


class ChannelMAE(mae_lib.MaskedAutoencoder):
  """MAE with one token per (patch, channel); see the module docstring."""

  def make_encoder(self, size):
    return ChannelEncoder(size, self.patch, drop_path=self.drop_path, dtype=self.dtype,
                          attention=self.attention)

  def make_decoder(self, size):
    return ChannelDecoder(size, self.patch, self.channels, dtype=self.dtype,
                          attention=self.attention)

  def num_fixed_params(self, image_hw) -> int:
    """The sin-cos position tables of encoder and decoder (N x width each, shared by channels)."""
    size, _ = self.decode_size()
    n = (image_hw[0] // self.patch) * (image_hw[1] // self.patch)
    return n * (size.width + size.dec_width)
