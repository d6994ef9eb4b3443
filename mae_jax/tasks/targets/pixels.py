"""Pixel targets (He et al. 2021): each patch's pixels in `patchify` order, optionally
normalised per patch (`norm_pix_loss`, unbiased variance as the reference); the error of a
slot is the mean squared error over its pixels, the baseline predicts empty patches."""

from __future__ import annotations

import jax.numpy as jnp

from mae_jax.models import mae as mae_lib


def normalize_patches(target):
  mean, std = mae_lib.patch_stats(target)
  return (target.astype(jnp.float32) - mean) / std


def squared_errors(pred, targets):
  """Per-slot mean squared error over the patch's pixels [B, S] (float32)."""
  return jnp.mean((pred.astype(jnp.float32) - targets.astype(jnp.float32)) ** 2, axis=-1)


class Targets:
  def __init__(self, patch: int, norm_pix_loss: bool = False):
    self.patch, self.norm_pix_loss = patch, norm_pix_loss

  @classmethod
  def from_config(cls, config):
    return cls(config.model.patch, bool(config.model.get("norm_pix_loss", False)))

  @classmethod
  def for_model(cls, model):
    """The targets a MaskedAutoencoder was built for (its patch and norm_pix_loss)."""
    return cls(model.patch, model.norm_pix_loss)

  def __call__(self, images, slot_ids=None):
    """[B, H, W, C] -> float32 targets [B, N, p*p*C] on the patch grid, or [B, S, p*p*C] at
    `slot_ids` [B, S] (a patch index per slot, -1 = padding: target 0)."""
    target = mae_lib.patchify(images, self.patch)
    if slot_ids is not None:
      valid = slot_ids >= 0
      target = jnp.where(valid[..., None],
                         mae_lib.take_tokens(target, jnp.maximum(slot_ids, 0)), 0)
    target = target.astype(jnp.float32)
    return normalize_patches(target) if self.norm_pix_loss else target

  def errors(self, pred, targets):
    return squared_errors(pred, targets)

  def baseline(self, targets):
    """The errors of predicting empty (all-zero) patches."""
    return jnp.mean(targets**2, axis=-1)
