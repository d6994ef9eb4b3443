"""The simple-observable baseline: jet observables computed from the images, then a
logistic regression. What a learned encoder's features must beat to be worth having.

`observables(images, channel_names)` works on raw (un-normalised) images [B, H, W, C]
in the public E2E channel layouts (names from the dataset metadata):

  calo_mass      invariant mass of the calorimeter pixels (ECAL + HCAL E_T), each a
                 massless particle at its pixel's (η, φ) relative to the image centre
                 (the mass is boost invariant along the beam, so relative η is enough)
  track_mass     the same from the track-pT pixels
  log_calo_et    log(1 + Σ calorimeter E_T)
  girth          Σ E_T ΔR / Σ E_T, ΔR from the E_T-weighted centroid
  ptd_tracks     p_T^D = sqrt(Σ pT²) / Σ pT over track pixels
  n_tracks, n_ecal, n_hcal_towers, n_hits   multiplicities (non-zero pixels; HCAL in
                 5 x 5 towers, pixel-layer hits summed over layers)
  log_sum_<ch>   log(1 + Σ |pixel|) per channel
  mean_abs_<ch>  mean |value| over non-zero pixels of the signed (impact-parameter)
                 channels: displaced tracks, i.e. b hadrons

Unknown channel names are treated as energy channels (sums and multiplicities
only). Pixel size 0.0174 in (η, φ) (the E2E images); only the masses depend on it.

`LogisticRegression`: standardised features, L2-penalised Newton iterations in
float64 (the test compares it with scikit-learn's).
"""

from __future__ import annotations

import numpy as np

PIXEL_SIZE = 0.0174
TRACK_NAMES = ("track_pt", "tracks")
SIGNED_NAMES = ("track_d0", "track_dz")
HIT_PREFIX = "bpix"


def _mass(et, eta, phi):
  """Invariant mass [B] of massless pixels with transverse energy et [B, H, W]."""
  px = (et * np.cos(phi)).sum((1, 2))
  py = (et * np.sin(phi)).sum((1, 2))
  pz = (et * np.sinh(eta)).sum((1, 2))
  e = (et * np.cosh(eta)).sum((1, 2))
  return np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))


def observables(images, channel_names=None, pixel_size: float = PIXEL_SIZE):
  """(features [B, F] float64, names [F]) of raw images [B, H, W, C] (see module doc)."""
  x = np.asarray(images, np.float64)
  if x.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {x.shape}")
  b, h, w, c = x.shape
  names = list(channel_names or [f"ch{i}" for i in range(c)])
  if len(names) != c:
    raise ValueError(f"{len(names)} channel names for {c} channels: {names}")
  idx = {n: i for i, n in enumerate(names)}
  signed = [i for i, n in enumerate(names) if n in SIGNED_NAMES]
  hits = [i for i, n in enumerate(names) if n.startswith(HIT_PREFIX)]
  track = next((idx[n] for n in TRACK_NAMES if n in idx), None)
  calo = [idx[n] for n in ("ecal", "hcal") if n in idx]
  if not calo:  # an unknown layout: every non-signed, non-hit, non-track channel is energy
    calo = [i for i in range(c) if i not in signed + hits and i != track]
  eta = ((np.arange(h) - (h - 1) / 2.0) * pixel_size)[None, :, None]
  phi = ((np.arange(w) - (w - 1) / 2.0) * pixel_size)[None, None, :]
  et = np.clip(x[..., calo].sum(-1), 0.0, None)
  total = et.sum((1, 2))
  safe = np.maximum(total, 1e-12)
  ceta = (et * eta).sum((1, 2)) / safe
  cphi = (et * phi).sum((1, 2)) / safe
  dr = np.sqrt((eta - ceta[:, None, None]) ** 2 + (phi - cphi[:, None, None]) ** 2)
  feats = {"calo_mass": _mass(et, eta, phi), "log_calo_et": np.log1p(total),
           "girth": (et * dr).sum((1, 2)) / safe}
  if track is not None:
    pt = np.clip(x[..., track], 0.0, None)
    spt = np.maximum(pt.sum((1, 2)), 1e-12)
    feats["track_mass"] = _mass(pt, eta, phi)
    feats["ptd_tracks"] = np.sqrt((pt**2).sum((1, 2))) / spt
    feats["n_tracks"] = (pt > 0).sum((1, 2)).astype(np.float64)
  for i in calo:
    grid = x[..., i]
    if names[i] == "hcal" and h % 5 == 0 and w % 5 == 0:  # towers of 5 x 5 pixels
      grid = grid.reshape(b, h // 5, 5, w // 5, 5).sum((2, 4))
      feats["n_hcal_towers"] = (grid != 0).sum((1, 2)).astype(np.float64)
    else:
      feats[f"n_{names[i]}"] = (grid != 0).sum((1, 2)).astype(np.float64)
  if hits:
    feats["n_hits"] = x[..., hits].sum((1, 2, 3))
  for i, n in enumerate(names):
    if i in signed:
      nz = x[..., i] != 0
      feats[f"mean_abs_{n}"] = np.abs(x[..., i]).sum((1, 2)) / np.maximum(nz.sum((1, 2)), 1)
    else:
      feats[f"log_sum_{n}"] = np.log1p(np.abs(x[..., i]).sum((1, 2)))
  keys = list(feats)
  return np.stack([feats[k] for k in keys], axis=1), keys


class LogisticRegression:
  """Binary logistic regression on standardised features, L2 penalty `l2` on the weights
  (not the intercept), fitted by Newton's method in float64."""

  def __init__(self, l2: float = 1.0, iterations: int = 100, tol: float = 1e-10):
    self.l2, self.iterations, self.tol = l2, iterations, tol

  def fit(self, x, y):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or len(x) != len(y):
      raise ValueError(f"features [N, F] and labels [N] expected, got {x.shape}, {y.shape}")
    if set(np.unique(y)) - {0.0, 1.0} or len(np.unique(y)) < 2:
      raise ValueError(f"labels must contain both 0 and 1 (got {np.unique(y)})")
    self.mean, self.std = x.mean(0), np.maximum(x.std(0), 1e-12)
    z = np.concatenate([(x - self.mean) / self.std, np.ones((len(x), 1))], axis=1)
    reg = np.full(z.shape[1], self.l2)
    reg[-1] = 0.0
    w = np.zeros(z.shape[1])
    for _ in range(self.iterations):
      p = 1.0 / (1.0 + np.exp(-(z @ w)))
      grad = z.T @ (p - y) + reg * w
      hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg) + 1e-9 * np.eye(len(w))
      step = np.linalg.solve(hess, grad)
      w -= step
      if np.max(np.abs(step)) < self.tol:
        break
    self.coef, self.intercept = w[:-1] / self.std, w[-1] - (w[:-1] * self.mean / self.std).sum()
    return self

  def decision_function(self, x):
    """Logits [N]."""
    return np.asarray(x, np.float64) @ self.coef + self.intercept
