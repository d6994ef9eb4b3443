"""Fidelity in physics: how well jet mass, jet pT, substructure and channel energies
survive a lossy encoding, from decoded images versus the originals (raw, un-normalised
[B, H, W, C]).

Per jet (`jet_quantities`):
  mass          calo_mass of `baselines` (calorimeter pixels as massless particles)
  pt            scalar Σ of the calorimeter E_T (`baselines.calo_et`)
  tau21, tau32  N-subjettiness ratios of the calorimeter deposits (ECAL pixels, HCAL
                towers: `baselines.calo_nsubjettiness`)
  energy_<ch>   Σ |pixel| of each channel (|.|: the impact-parameter channels are signed)

Per quantity (`response_resolution`), over jets, of the ratio r = decoded / original:
  response      mean of r
  resolution    standard deviation of r
  half_width_68 half the width of r's central 68% interval (16th to 84th percentile),
                robust to the tails
Zero denominators: a jet whose original quantity is 0 (an empty channel, τ21 of a jet
with ≤ 1 pixel, ...) or not finite has no ratio; it is left out and counted in
n_excluded. A decoded 0 against a non-zero original is kept (r = 0: a lost jet).
With no jet left the statistics are NaN.
"""

from __future__ import annotations

import numpy as np

from mae_jax.evaluate import baselines

STATS = ("response", "resolution", "half_width_68", "n", "n_excluded")


def jet_quantities(images, channel_names=None, pixel_size: float = baselines.PIXEL_SIZE,
                   taus=None):
  """{name: [B] float64} (see module doc) of raw images [B, H, W, C]. `taus`: their
  {"tau21", "tau32"} if already computed (the costly part; e.g. the columns of
  `baselines.observables`, the same function)."""
  x = np.asarray(images)
  names = baselines._channels(x.shape, channel_names)[0]
  et = baselines.calo_et(x, channel_names)
  eta, phi = baselines.pixel_grid(et.shape[1], et.shape[2], pixel_size)
  if taus is None:
    taus = baselines.calo_nsubjettiness(x, channel_names, pixel_size)
  out = {"mass": baselines._mass(et, eta, phi), "pt": et.sum((1, 2)),
         "tau21": taus["tau21"], "tau32": taus["tau32"]}
  for i, n in enumerate(names):
    out[f"energy_{n}"] = np.abs(x[..., i].astype(np.float64)).sum((1, 2))
  return out


def response_resolution(original, decoded):
  """{response, resolution, half_width_68, n, n_excluded} of decoded / original [N]."""
  original = np.asarray(original, np.float64)
  decoded = np.asarray(decoded, np.float64)
  if original.shape != decoded.shape or original.ndim != 1:
    raise ValueError(f"original and decoded must be matching [N], got {original.shape}, "
                     f"{decoded.shape}")
  ok = np.isfinite(original) & (original != 0) & np.isfinite(decoded)
  r = decoded[ok] / original[ok]
  if not len(r):
    return {"response": np.nan, "resolution": np.nan, "half_width_68": np.nan, "n": 0,
            "n_excluded": int(len(original))}
  lo, hi = np.percentile(r, [15.865, 84.135])  # central 68.27%
  return {"response": float(r.mean()), "resolution": float(r.std()),
          "half_width_68": float((hi - lo) / 2), "n": int(len(r)),
          "n_excluded": int(len(original) - len(r))}


def fidelity(original_images, decoded_images, channel_names=None,
             pixel_size: float = baselines.PIXEL_SIZE):
  """{quantity: response_resolution(...)} of decoded versus original images."""
  a, b = np.shape(original_images), np.shape(decoded_images)
  if a != b:
    raise ValueError(f"decoded images {b} do not match the originals {a}")
  qa = jet_quantities(original_images, channel_names, pixel_size)
  qb = jet_quantities(decoded_images, channel_names, pixel_size)
  return {k: response_resolution(qa[k], qb[k]) for k in qa}
