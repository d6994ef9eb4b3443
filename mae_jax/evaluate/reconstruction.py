"""MAE reconstruction quality over a split: exact accumulation of per-batch sums.

`reconstruction_sums(images, pred, mask, patch)` (jnp, jittable; also takes
numpy) returns SUMS for one batch; add batches on the host with
`accumulate(total, sums)` (float64) and turn the totals into means with
`finalize(total)` (float64). Means over a split are then exact: they do not
depend on how the split was batched (no averaging of per-batch means).

Inputs
  images: [B, H, W, C] the model input (pixel units of the data pipeline).
  pred:   [B, N, p*p*C] MAE decoder output (`aux["pred"]`), same units as
          images. A model trained with norm_pix_loss predicts per-patch
          normalised pixels: map it back with `denormalize_pred` first.
  mask:   [B, N] 1 = masked (`aux["mask"]`).
  patch:  p. Targets are `mae.patchify(images, p)`, pixel order (row, col, channel).

What is measured (all per channel [C], and pooled over channels by `finalize`)
  masked:   squared error over the pixels of masked patches (the MAE loss).
  all:      squared error over every pixel, with the *decoder's prediction*
            used for visible patches too (not the visible input pasted back,
            which would make those pixels exact). It shows how well the
            decoder reproduces what it saw; it is not the training loss.
  occupied / empty: within masked patches, pixels whose target is non-zero
            (|target| > occupied_threshold) vs zero. Detector images are ~97%
            empty, so "empty" error alone can look excellent.
  zeros baseline: every MSE above is paired with the MSE of predicting 0 for
            every pixel ("*_zeros"), computed over the same pixels, and
            `skill_* = 1 - mse / mse_zeros` (> 0: better than predicting zeros).
  energy:   per jet and channel, E_true = sum of target over the pixels of its
            masked patches, E_rec = sum of pred there; relative error
            (E_rec - E_true) / E_true over jets with E_true > min_energy
            (others are counted in "energy_skipped"); mean and std (ddof=0)
            over those jets, plus the split-total ratio sum E_rec / sum E_true.
            "Energy" is the sum of pixel values in the pipeline's units: it is
            a physical energy only when the normalisation is linear.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.models import mae as mae_lib

__all__ = ["reconstruction_sums", "reconstruction_sums_jit", "denormalize_pred", "init_sums",
           "accumulate", "finalize", "SUM_KEYS"]

# every entry of the sums dict is [C] except n_jets (scalar)
SUM_KEYS = (
    "n_jets",
    "masked_sq", "masked_zero_sq", "masked_count",
    "all_sq", "all_zero_sq", "all_count",
    "occ_sq", "occ_zero_sq", "occ_count",
    "empty_sq", "empty_count",
    "energy_true", "energy_rec", "energy_jets", "energy_rel_mean", "energy_rel_m2",
    "energy_skipped",
)
# (count, mean, M2) triples merged with Chan et al.'s pairwise formula, not added
_MOMENTS = ("energy_jets", "energy_rel_mean", "energy_rel_m2")


def denormalize_pred(pred, images, patch: int):
  """Maps a norm_pix_loss prediction back to pixel units with each target patch's
  mean and std (as the MAE visualisation does; this uses the target's statistics)."""
  mean, std = mae_lib.patch_stats(mae_lib.patchify(jnp.asarray(images, jnp.float32), patch))
  return jnp.asarray(pred, jnp.float32) * std + mean


def reconstruction_sums(images, pred, mask, patch: int, *, occupied_threshold: float = 0.0,
                        min_energy: float = 0.0) -> dict:
  """Per-batch sums (float32 jnp arrays, [C] each; "n_jets" scalar). Jittable with
  `patch`, `occupied_threshold`, `min_energy` static (see `reconstruction_sums_jit`)."""
  images = jnp.asarray(images, jnp.float32)
  pred = jnp.asarray(pred, jnp.float32)
  mask = jnp.asarray(mask)
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got {images.shape}")
  b, h, w, c = images.shape
  target = mae_lib.patchify(images, patch)  # [B, N, p*p*C]
  n = target.shape[1]
  if pred.shape != target.shape:
    raise ValueError(f"pred must be [B, N, p*p*C] = {target.shape} for images {images.shape} and "
                     f"patch {patch}, got {pred.shape}")
  if mask.shape != (b, n):
    raise ValueError(f"mask must be [B, N] = {(b, n)}, got {mask.shape}")
  pp = patch * patch
  t = target.reshape(b, n, pp, c)
  y = pred.reshape(b, n, pp, c)
  m = (mask.astype(jnp.float32) > 0.5).astype(jnp.float32)[:, :, None, None]  # [B, N, 1, 1]
  m_full = jnp.broadcast_to(m, t.shape)
  sq = (y - t) ** 2
  zsq = t ** 2
  occ = (jnp.abs(t) > occupied_threshold).astype(jnp.float32) * m
  empty = m - occ
  axes = (0, 1, 2)

  e_true = jnp.sum(t * m, axis=(1, 2))  # [B, C]
  e_rec = jnp.sum(y * m, axis=(1, 2))
  valid = e_true > min_energy
  rel = jnp.where(valid, (e_rec - e_true) / jnp.where(valid, e_true, 1.0), 0.0)
  valid_f = valid.astype(jnp.float32)
  n_valid = jnp.sum(valid_f, axis=0)
  rel_mean = jnp.sum(rel, axis=0) / jnp.maximum(n_valid, 1.0)  # centred per batch: no cancellation
  rel_m2 = jnp.sum(valid_f * (rel - rel_mean) ** 2, axis=0)
  has_masked = (jnp.sum(m, axis=(1, 2, 3)) > 0).astype(jnp.float32)[:, None]  # [B, 1]
  return {
      "n_jets": jnp.asarray(b, jnp.float32),
      "masked_sq": jnp.sum(sq * m, axis=axes),
      "masked_zero_sq": jnp.sum(zsq * m, axis=axes),
      "masked_count": jnp.sum(m_full, axis=axes),
      "all_sq": jnp.sum(sq, axis=axes),
      "all_zero_sq": jnp.sum(zsq, axis=axes),
      "all_count": jnp.full((c,), float(b * n * pp), jnp.float32),
      "occ_sq": jnp.sum(sq * occ, axis=axes),
      "occ_zero_sq": jnp.sum(zsq * occ, axis=axes),
      "occ_count": jnp.sum(occ, axis=axes),
      "empty_sq": jnp.sum(sq * empty, axis=axes),
      "empty_count": jnp.sum(empty, axis=axes),
      "energy_true": jnp.sum(e_true, axis=0),
      "energy_rec": jnp.sum(e_rec, axis=0),
      "energy_jets": n_valid,
      "energy_rel_mean": rel_mean,
      "energy_rel_m2": rel_m2,
      "energy_skipped": jnp.sum((1.0 - valid_f) * has_masked, axis=0),
  }


reconstruction_sums_jit = jax.jit(
    reconstruction_sums, static_argnames=("patch", "occupied_threshold", "min_energy"))


def init_sums(channels: int) -> dict:
  """Zero totals (float64 numpy) for `channels` channels."""
  out = {k: np.zeros((channels,), np.float64) for k in SUM_KEYS}
  out["n_jets"] = np.zeros((), np.float64)
  return out


def accumulate(total: dict | None, sums: dict) -> dict:
  """total + sums in float64 on the host (total=None starts a new one).

  Counts and sums add; the per-jet relative energy error is carried as
  (count, mean, M2) and merged with the pairwise update of Chan et al., so its
  std does not suffer from E[r^2] - E[r]^2 cancellation."""
  sums = {k: np.asarray(jax.device_get(v), np.float64) for k, v in sums.items()}
  if total is None:
    return sums
  if set(total) != set(sums):
    raise ValueError(f"mismatched keys: {sorted(set(total) ^ set(sums))}")
  out = {k: total[k] + sums[k] for k in total if k not in _MOMENTS}
  na, nb = total["energy_jets"], sums["energy_jets"]
  n = na + nb
  delta = sums["energy_rel_mean"] - total["energy_rel_mean"]
  frac = _div(nb, n)
  frac = np.where(np.isnan(frac), 0.0, frac)
  out["energy_jets"] = n
  out["energy_rel_mean"] = total["energy_rel_mean"] + delta * frac
  out["energy_rel_m2"] = total["energy_rel_m2"] + sums["energy_rel_m2"] + delta ** 2 * na * frac
  return out


def _div(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def finalize(total: dict) -> dict:
  """Means from accumulated sums (float64). Channel-pooled values are floats,
  "*_per_channel" values are [C] arrays; NaN where nothing was counted."""
  t = {k: np.asarray(v, np.float64) for k, v in total.items()}
  out = {"n_jets": int(round(float(t["n_jets"])))}
  for name, sq, zsq, cnt in (("masked", "masked_sq", "masked_zero_sq", "masked_count"),
                             ("all", "all_sq", "all_zero_sq", "all_count"),
                             ("occupied", "occ_sq", "occ_zero_sq", "occ_count"),
                             ("empty", "empty_sq", None, "empty_count")):
    out[f"mse_{name}"] = float(_div(t[sq].sum(), t[cnt].sum()))
    out[f"mse_{name}_per_channel"] = _div(t[sq], t[cnt])
    if zsq is not None:
      out[f"mse_{name}_zeros"] = float(_div(t[zsq].sum(), t[cnt].sum()))
      out[f"mse_{name}_zeros_per_channel"] = _div(t[zsq], t[cnt])
      out[f"skill_{name}"] = 1.0 - out[f"mse_{name}"] / out[f"mse_{name}_zeros"] \
          if out[f"mse_{name}_zeros"] > 0 else float("nan")
  out["mse_empty_zeros"] = 0.0  # predicting zeros is exact on empty pixels
  out["occupied_fraction"] = float(_div(t["occ_count"].sum(), t["masked_count"].sum()))
  out["occupied_fraction_per_channel"] = _div(t["occ_count"], t["masked_count"])
  has = t["energy_jets"] > 0
  out["energy_rel_mean"] = np.where(has, t["energy_rel_mean"], np.nan)
  out["energy_rel_std"] = np.sqrt(_div(t["energy_rel_m2"], t["energy_jets"]))
  out["energy_ratio"] = _div(t["energy_rec"], t["energy_true"])
  out["energy_jets"] = t["energy_jets"].astype(np.int64)
  out["energy_skipped"] = t["energy_skipped"].astype(np.int64)
  return out
