"""Sparse-token MAE: the ViT MAE computed only where the detector saw something.

Jet images are almost empty: 113 (top/QCD) or 64 (quark/gluon) of the 625 5x5
patches hold any non-zero pixel. `SparseMAE` has exactly the parameters of the
ViT `MAE` (same names and shapes, so its encoder probes, finetunes and exports
like a dense one) but its tokens are the occupied patches only:

  tokens    each jet's occupied patches (any non-zero pixel in any channel), as a
            padded list `patch_ids` [B, T] of patch indices in ascending order,
            -1 for padding. T is a bucket length chosen per batch by the input
            pipeline (data/pipeline.py), so a few lengths compile, not one per
            batch; without `patch_ids` the model finds them itself (T = N).
            Each token carries the fixed 2-D sin-cos position of its patch.
  masking   the mask ratio applies to each jet's occupied patches:
            keep = max(1, floor(n (1 - mask_ratio))) of its n tokens stay visible,
            chosen by argsort of uniform noise as in the dense MAE.
  encoder   runs on the visible tokens only (padded to floor(T (1 - ratio)),
            key-padding mask), CLS first. Masked tokens never enter it: their
            pixels are zeroed and their rows are padding.
  decoder   gets the encoder output at the visible slots and the mask token at
            the masked slots, plus every slot's position: it is told WHERE the
            masked occupied patches are (as Point-MAE is told the masked patch
            centres) and reconstructs WHAT they hold. Empty patches are neither
            inputs nor targets (`empty_queries` adds some, see below).
  loss      the task's (tasks/mae.py): per-pixel MSE over the masked occupied patches.

`empty_queries` = E > 0 adds E empty patches per jet (random, from the same
noise) to the decoder's queries with target 0, so the decoder can no longer
assume that every position it is asked about is occupied (docs/models.md
measures whether it helps).

`__call__` returns `(pred, aux)`: pred [B, S, p*p*C] at the decoder's S slots (the
tokens, then the empty queries), with what the task's loss needs: aux "slot_ids" [B, S]
(each slot's patch index, -1 = padding) and "slot_mask" [B, S] (the masked slots the loss
counts). aux also follows the MAE interface on the full patch grid, so evaluation,
reconstruction reports and figures work unchanged: "pred" [B, N, p*p*C] (0 for patches
that were not tokens), "mask" [B, N] (1 = a masked token: occupied, or an empty query);
plus "patch_ids".
`encode` returns the tokens of all occupied patches [B, 1 + T, D], their
"valid" mask [B, 1 + T] and the mean over valid patch tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.models import mae as mae_lib


def occupied_patch_ids(images, patch: int, capacity: int | None = None):
  """[B, H, W, C] -> [B, K] int32: indices of the patches holding any non-zero pixel, in
  ascending order, then -1. K = `capacity` (default all N patches); a jet with more
  occupied patches than K keeps its first K (callers size K so that never happens)."""
  occupied = jnp.any(mae_lib.patchify(images, patch) != 0, axis=-1)  # [B, N]
  n = occupied.shape[1]
  capacity = capacity or n
  order = jnp.argsort(~occupied, axis=1, stable=True)[:, :capacity]
  ids = jnp.where(jnp.take_along_axis(occupied, order, axis=1), order, -1).astype(jnp.int32)
  return jnp.pad(ids, ((0, 0), (0, max(capacity - n, 0))), constant_values=-1)


def occupied_patch_ids_np(image: np.ndarray, patch: int) -> np.ndarray:
  """One image [H, W, C] -> the ascending indices of its occupied patches (numpy)."""
  h, w, c = image.shape
  x = image.reshape(h // patch, patch, w // patch, patch, c)
  return np.flatnonzero(np.any(x != 0, axis=(1, 3, 4))).astype(np.int32)


def visible_count(n, mask_ratio: float):
  """Visible tokens of a jet with n occupied patches: max(1, floor(n (1 - r))), 0 if n = 0."""
  keep = jnp.floor(n.astype(jnp.float32) * (1.0 - mask_ratio) + 1e-4).astype(jnp.int32)
  return jnp.where(n > 0, jnp.maximum(keep, 1), 0)


def encoder_capacity(t: int, mask_ratio: float) -> int:
  """Static length of the encoder's visible-token list for T token slots."""
  return max(1, int(np.floor(t * (1.0 - mask_ratio) + 1e-4)))


def scatter_patches(values, patch_ids, n_patches: int):
  """[B, T, ...] at token slots -> [B, N, ...] on the patch grid (0 where no token)."""
  b, t = patch_ids.shape
  ids = jnp.where(patch_ids >= 0, patch_ids, n_patches)  # padding goes out of range: dropped
  out = jnp.zeros((b, n_patches) + values.shape[2:], values.dtype)
  return out.at[jnp.arange(b)[:, None], ids].set(values, mode="drop")


class SparseMAE(mae_lib.MAE):
  """ViT MAE over occupied patches only (see the module docstring)."""
  empty_queries: int = 0

  def _tokens(self, images, patch_ids):
    """Pixels [B, T, p*p*C] (0 at padding), patch_ids [B, T], valid [B, T], counts [B]."""
    if patch_ids is None:
      patch_ids = occupied_patch_ids(images, self.patch)
    if patch_ids.ndim != 2 or patch_ids.shape[0] != images.shape[0]:
      raise ValueError(f"patch_ids must be [batch, tokens], got {patch_ids.shape} for images "
                       f"{images.shape}")
    valid = patch_ids >= 0
    pixels = mae_lib.take_tokens(mae_lib.patchify(images, self.patch), jnp.maximum(patch_ids, 0))
    pixels = jnp.where(valid[..., None], pixels, 0)
    return pixels, patch_ids, valid, valid.sum(axis=1).astype(jnp.int32)

  def _empty_patches(self, images, patch_ids, key):
    """`empty_queries` random empty patches per jet [B, E] (-1 where a jet has fewer)."""
    b = images.shape[0]
    grid_n = (images.shape[1] // self.patch) * (images.shape[2] // self.patch)
    occupied = jnp.zeros((b, grid_n + 1), bool).at[
        jnp.arange(b)[:, None], jnp.where(patch_ids >= 0, patch_ids, grid_n)].set(True)
    score = jnp.where(occupied[:, :grid_n], 2.0, jax.random.uniform(key, (b, grid_n)))
    empty = jnp.argsort(score, axis=1)[:, :self.empty_queries].astype(jnp.int32)
    return jnp.where(jnp.take_along_axis(score, empty, axis=1) < 2.0, empty, -1)

  def __call__(self, images, noise=None, train: bool = True, patch_ids=None):
    self._check(images)
    b, h, w, _ = images.shape
    grid = (h // self.patch, w // self.patch)
    n_patches = grid[0] * grid[1]
    pixels, patch_ids, valid, n = self._tokens(images.astype(self.dtype), patch_ids)
    t = patch_ids.shape[1]
    if noise is None:
      noise = jax.random.uniform(self.make_rng("masking"), (b, t))
    noise = jnp.where(valid, noise, 2.0)  # padding sorts last
    visible = visible_count(n, self.mask_ratio)
    ids_shuffle = jnp.argsort(noise, axis=1)
    rank = jnp.argsort(ids_shuffle, axis=1)  # each token's place in the shuffled order

    # encoder: the first `visible` tokens of the shuffled order; masked ones never enter
    cap = encoder_capacity(t, self.mask_ratio)
    enc_ids = ids_shuffle[:, :cap]
    is_visible = jnp.arange(cap)[None, :] < visible[:, None]
    enc_pixels = jnp.where(is_visible[..., None], mae_lib.take_tokens(pixels, enc_ids), 0)
    enc_pos = jnp.where(is_visible, jnp.take_along_axis(patch_ids, enc_ids, axis=1), 0)
    latent = self.encoder.encode_tokens(enc_pixels, enc_pos, visible, grid,
                                        deterministic=not train)

    # decoder slots: the jet's tokens, then the empty queries (ranked after every token, so
    # never visible, target 0), compacted so that real slots come first (key padding)
    slot_ids, slot_rank = patch_ids, rank
    if self.empty_queries:
      empty = self._empty_patches(images, patch_ids, self.make_rng("masking"))
      slot_ids = jnp.concatenate([patch_ids, empty], axis=1)
      slot_rank = jnp.concatenate(
          [rank, jnp.broadcast_to(t + jnp.arange(self.empty_queries), (b, self.empty_queries))],
          axis=1)
      order = jnp.argsort(slot_ids < 0, axis=1, stable=True)
      slot_ids = jnp.take_along_axis(slot_ids, order, axis=1)
      slot_rank = jnp.take_along_axis(slot_rank, order, axis=1)
    slot_valid = slot_ids >= 0
    slot_pos = jnp.maximum(slot_ids, 0)
    pred = self.decoder(latent, slot_rank, grid, positions=slot_pos, visible=visible,
                        lengths=slot_valid.sum(axis=1).astype(jnp.int32))
    masked = slot_valid & (slot_rank >= visible[:, None])
    aux = {"pred": scatter_patches(jnp.where(slot_valid[..., None], pred, 0), slot_ids,
                                   n_patches),
           "mask": scatter_patches(masked.astype(images.dtype), slot_ids, n_patches),
           "slot_ids": slot_ids, "slot_mask": masked,
           "latent": latent, "ids_restore": rank, "patch_ids": patch_ids, "visible": visible}
    return pred, aux

  def encode(self, images, train: bool = False, patch_ids=None):
    """Tokens of all occupied patches [B, 1 + T, D] (CLS first), their "valid" mask
    [B, 1 + T], "cls" and "mean" over the valid patch tokens."""
    self._check(images)
    grid = (images.shape[1] // self.patch, images.shape[2] // self.patch)
    pixels, patch_ids, valid, n = self._tokens(images.astype(self.dtype), patch_ids)
    tokens = self.encoder.encode_tokens(pixels, jnp.maximum(patch_ids, 0), n, grid,
                                        deterministic=not train)
    w = valid.astype(tokens.dtype)[..., None]
    mean = (tokens[:, 1:] * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)
    token_valid = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)
    return {"cls": tokens[:, 0], "mean": mean, "tokens": tokens, "valid": token_valid}
