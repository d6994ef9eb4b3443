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
  tau1, tau2, tau3, tau21, tau32   N-subjettiness of the calorimeter deposits (appended
                 last; see `nsubjettiness`); tau21 = tau2/tau1, tau32 = tau3/tau2, 0 where
                 the denominator is 0 (an empty or one-pixel jet)

Unknown channel names are treated as energy channels (sums and multiplicities
only). Pixel size 0.0174 in (η, φ) (the E2E images); only the masses depend on it.

`nsubjettiness(pt, eta, phi, valid)`: τ_N (β = 1) of padded point clouds, axes from
exclusive-kT (E-scheme, no beam distance: fastjet's kt_algorithm with R larger than the
jet, as fastjet-contrib's ExclusiveJetAxes), no axis minimisation afterwards. The
observables' τ's use `calo_particles`: each ECAL pixel and each 5 x 5 HCAL tower is a
massless particle with pT = its E_T at its (η, φ) (rapidity = η).

`PixelCalibration`: the physicist's regression estimate of jet mass / pT, a least-squares
linear calibration of the image's own calo_mass and Σ E_T (`pixel_estimates`).

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


def _channels(shape, channel_names):
  """(names, signed, hits, track, calo) channel roles of images of `shape` [B, H, W, C]."""
  if len(shape) != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {tuple(shape)}")
  c = shape[-1]
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
  return names, signed, hits, track, calo


def pixel_grid(h, w, pixel_size: float = PIXEL_SIZE):
  """(eta [1, H, 1], phi [1, 1, W]) of the pixel centres relative to the image centre."""
  eta = ((np.arange(h) - (h - 1) / 2.0) * pixel_size)[None, :, None]
  phi = ((np.arange(w) - (w - 1) / 2.0) * pixel_size)[None, None, :]
  return eta, phi


def calo_et(images, channel_names=None):
  """Calorimeter E_T [B, H, W] float64: Σ of the ECAL + HCAL channels (or of every energy
  channel in an unknown layout), negative values clipped to 0."""
  x = np.asarray(images)
  calo = _channels(x.shape, channel_names)[4]
  return np.clip(x[..., calo].astype(np.float64).sum(-1), 0.0, None)


def observables(images, channel_names=None, pixel_size: float = PIXEL_SIZE):
  """(features [B, F] float64, names [F]) of raw images [B, H, W, C] (see module doc)."""
  x = np.asarray(images, np.float64)
  names, signed, hits, track, calo = _channels(x.shape, channel_names)
  b, h, w, c = x.shape
  eta, phi = pixel_grid(h, w, pixel_size)
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
  feats.update(calo_nsubjettiness(x, names, pixel_size))
  keys = list(feats)
  return np.stack([feats[k] for k in keys], axis=1), keys


# N-subjettiness. ---------------------------------------------------------------------------
R0 = 0.8  # jet radius of the boosted-jet images: the τ_N normalisation


def _wrap(dphi, needed=True):
  # Jet images span |φ| < π/2 about their axis, so the φ difference of any two E-scheme
  # sums of their pixels stays below π: the (costly) wrap is only done for wider clouds.
  return (dphi + np.pi) % (2 * np.pi) - np.pi if needed else dphi


def _rapidity(pz, e):
  return 0.5 * np.log(np.maximum(e + pz, 1e-300) / np.maximum(e - pz, 1e-300))


_FAR = 1e6  # the rapidity of dead slots: no live particle ever has one as its neighbour


def _nearest(y, phi, rows_b, rows_s, wrap=True):
  """Geometric nearest live neighbour (index, ΔR²) of particles (rows_b, rows_s); dead
  slots sit at rapidity _FAR."""
  d = (y[rows_b] - y[rows_b, rows_s][:, None]) ** 2
  d += _wrap(phi[rows_b] - phi[rows_b, rows_s][:, None], wrap) ** 2
  d[np.arange(len(rows_b)), rows_s] = np.inf
  k = np.argmin(d, 1) if d.shape[1] else np.zeros(len(rows_b), np.int64)
  return k, d[np.arange(len(rows_b)), k] if d.shape[1] else np.full(len(rows_b), np.inf)


def exclusive_kt_axes(pt, eta, phi, valid, njets=(2, 3)):
  """{N: (rapidity [B, N], phi [B, N], found [B])}: the exclusive-kT jets of each padded
  cloud of massless particles [B, n] clustered to N jets.

  d_ij = min(pT_i², pT_j²) ΔR_ij², no beam distance (fastjet's kt_algorithm with R beyond
  the jet), E-scheme recombination. Vectorised over jets: one merge per jet per step, with
  FastJet's nearest-neighbour bookkeeping (the smallest d_ij pairs a particle with its
  geometric nearest neighbour), so a step costs O(B n). found is False where the cloud
  is empty; a cloud of at most N particles is its own jets (padded far away). Exact ΔR
  ties (pixels on a grid) are broken by slot order, which may differ from fastjet's; the
  axes then differ only among equivalent choices."""
  pt, eta, phi = (np.asarray(a, np.float64) for a in (pt, eta, phi))
  alive = np.asarray(valid, bool) & (pt > 0)
  b, n = pt.shape
  w = np.where(alive, pt, 0.0)
  px, py, pz, e = w * np.cos(phi), w * np.sin(phi), w * np.sinh(eta), w * np.cosh(eta)
  y, ph, kt2 = np.where(alive, eta, _FAR), np.where(alive, phi, 0.0), w**2
  wrap = bool(alive.any() and np.abs(ph[alive]).max() >= np.pi / 2)
  nn = np.zeros((b, n), np.int64)
  nnd = np.full((b, n), np.inf)
  chunk = max(1, 4_000_000 // max(n * n, 1))  # bound the [chunk, n, n] distance memory
  for lo in range(0, b, chunk):
    rb, rs = np.nonzero(alive[lo:lo + chunk])
    if len(rb):
      nn[lo + rb, rs], nnd[lo + rb, rs] = _nearest(y, ph, lo + rb, rs, wrap)
  count = alive.sum(1)
  out = {m: (np.zeros((b, m)), np.zeros((b, m)), np.zeros(b, bool)) for m in njets}

  def snapshot(jets, first=False):
    for m, (ay, aphi, found) in out.items():
      # at the start, a cloud of 1..N particles is its own N jets (dead slots, at
      # rapidity _FAR, pad the axes and are never the nearest)
      sel = jets[(count[jets] <= m) & (count[jets] > 0)] if first else jets[count[jets] == m]
      if len(sel):
        slots = np.argsort(~alive[sel], axis=1, kind="stable")[:, :m]
        if slots.shape[1] < m:  # fewer slots than axes: repeat one (a duplicate axis)
          slots = np.pad(slots, ((0, 0), (0, m - slots.shape[1])), mode="edge")
        ay[sel] = np.take_along_axis(y[sel], slots, 1)
        aphi[sel] = np.take_along_axis(ph[sel], slots, 1)
        found[sel] = True

  snapshot(np.arange(b), first=True)
  stop = min(njets)
  while True:
    ab = np.nonzero(count > stop)[0]
    if not len(ab):
      break
    if n > 16 and count.max() <= n // 2:  # compact: move alive slots to the front
      n = max(int(count.max()), 2)
      perm = np.argsort(~alive, axis=1, kind="stable")[:, :n]
      inv = np.zeros_like(nn)
      np.put_along_axis(inv, perm, np.arange(n)[None, :].repeat(b, 0), 1)
      nn = np.take_along_axis(inv, np.take_along_axis(nn, perm, 1), 1)
      px, py, pz, e, y, ph, kt2, nnd, alive = (np.take_along_axis(a, perm, 1) for a in
                                               (px, py, pz, e, y, ph, kt2, nnd, alive))
    r = np.arange(len(ab))
    nn_a, nnd_a, alive_a = nn[ab], nnd[ab], alive[ab]
    with np.errstate(invalid="ignore"):  # 0 * inf on dead slots, masked out
      dij = np.where(alive_a, np.minimum(kt2[ab], np.take_along_axis(kt2[ab], nn_a, 1)) * nnd_a,
                     np.inf)
    i = np.argmin(dij, 1)
    j = nn_a[r, i]
    keep, drop = np.minimum(i, j), np.maximum(i, j)
    for a in (px, py, pz, e):
      a[ab, keep] += a[ab, drop]
      a[ab, drop] = 0.0
    alive[ab, drop] = False
    alive_a[r, drop] = False
    y[ab, drop] = _FAR
    kt2[ab, drop] = 0.0
    kx, ky, kz, ke = px[ab, keep], py[ab, keep], pz[ab, keep], e[ab, keep]
    y[ab, keep], ph[ab, keep], kt2[ab, keep] = (_rapidity(kz, ke), np.arctan2(ky, kx),
                                                kx**2 + ky**2)
    # Rows whose neighbour was merged away, or moved away from them, need a fresh search;
    # every other row may only have gained the merged particle as a closer neighbour.
    d = (y[ab] - y[ab, keep][:, None]) ** 2 + _wrap(ph[ab] - ph[ab, keep][:, None], wrap) ** 2
    dirty = alive_a & ((nn_a == drop[:, None]) | ((nn_a == keep[:, None]) & (d > nnd_a)))
    dirty[r, keep] = True
    closer = alive_a & ~dirty & (d <= nnd_a)
    nn[ab] = np.where(closer, keep[:, None], nn_a)
    nnd[ab] = np.where(closer, d, nnd_a)
    db, ds = np.nonzero(dirty)
    nn[ab[db], ds], nnd[ab[db], ds] = _nearest(y, ph, ab[db], ds, wrap)
    count[ab] -= 1
    snapshot(ab)
  return out


def nsubjettiness(pt, eta, phi, valid, r0: float = R0, n_max: int = 3, axes_from=None):
  """τ_N [B, n_max] (N = 1..n_max, β = 1) of padded clouds of massless particles [B, n]:
  τ_N = Σ_i pT_i min_k ΔR(i, axis_k) / (Σ_i pT_i r0), ΔR in (rapidity, φ); the axis of
  τ1 is the whole jet's, those of τ_{N>1} the exclusive-kT jets (`exclusive_kt_axes`) of
  the same particles, or of `axes_from` = (pt, eta, phi, valid) [B, n'] (coarser
  particles of the same jets: cheaper clustering). τ_N = 0 for empty clouds and, without
  axes_from, for clouds of at most N particles (each is its own axis)."""
  pt, eta, phi = (np.asarray(a, np.float64) for a in (pt, eta, phi))
  w = np.where(np.asarray(valid, bool) & (pt > 0), pt, 0.0)
  total = w.sum(1)
  px, py = (w * np.cos(phi)).sum(1), (w * np.sin(phi)).sum(1)
  pz, e = (w * np.sinh(eta)).sum(1), (w * np.cosh(eta)).sum(1)
  axes = {1: (_rapidity(pz, e)[:, None], np.arctan2(py, px)[:, None], total > 0)}
  if n_max > 1:
    axes.update(exclusive_kt_axes(*(axes_from or (pt, eta, phi, valid)),
                                  njets=tuple(range(2, n_max + 1))))
  taus = np.zeros((len(pt), n_max))
  for m, (ay, aphi, found) in axes.items():
    d2 = (eta[:, :, None] - ay[:, None, :]) ** 2 + _wrap(phi[:, :, None] - aphi[:, None, :]) ** 2
    num = (w * np.sqrt(d2.min(-1))).sum(1)
    taus[:, m - 1] = np.where(found, num / np.maximum(total * r0, 1e-300), 0.0)
  return taus


def _ratio(num, den):
  return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _pack(values, eta, phi):
  """(pt, eta, phi, valid) [B, n_max] of the positive entries of values [B, P] at
  positions eta, phi [P]."""
  b = len(values)
  jb, k = np.nonzero(values > 0)  # row-major: sorted by jet
  counts = np.bincount(jb, minlength=b)
  n = max(int(counts.max()) if b else 0, 1)
  slot = np.arange(len(jb)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[jb]
  out = np.zeros((4, b, n))
  out[0, jb, slot] = values[jb, k]
  out[1, jb, slot] = eta[k]
  out[2, jb, slot] = phi[k]
  out[3, jb, slot] = 1.0
  return out[0], out[1], out[2], out[3] > 0


def pack_pixels(grid, pixel_size: float = PIXEL_SIZE):
  """(pt, eta, phi, valid) [B, n_max] of the non-zero (positive) pixels of grid [B, H, W]."""
  grid = np.asarray(grid, np.float64)
  b, h, w = grid.shape
  eta, phi = pixel_grid(h, w, pixel_size)
  return _pack(grid.reshape(b, h * w), np.repeat(eta[0, :, 0], w), np.tile(phi[0, 0, :], h))


def _taus(values, eta, phi, r0, group, axes_from=None):
  """τ features of particles values [B, P] at eta, phi [P] (axes: exclusive-kT of
  axes_from = (values', eta', phi'), if given), in groups of jets with similar particle
  counts, so little of each group's padded work is padding."""
  order = np.argsort((values > 0).sum(1) if axes_from is None else (axes_from[0] > 0).sum(1),
                     kind="stable")
  taus = np.zeros((len(values), 3))
  for lo in range(0, len(values), group):
    sel = order[lo:lo + group]
    coarse = None if axes_from is None else _pack(axes_from[0][sel], *axes_from[1:])
    taus[sel] = nsubjettiness(*_pack(values[sel], eta, phi), r0=r0, axes_from=coarse)
  return {"tau1": taus[:, 0], "tau2": taus[:, 1], "tau3": taus[:, 2],
          "tau21": _ratio(taus[:, 1], taus[:, 0]), "tau32": _ratio(taus[:, 2], taus[:, 1])}


def image_nsubjettiness(et, pixel_size: float = PIXEL_SIZE, r0: float = R0, group: int = 32):
  """{tau1, tau2, tau3, tau21, tau32} [B] of E_T grids [B, H, W], one particle a pixel."""
  et = np.asarray(et, np.float64)
  b, h, w = et.shape
  eta, phi = pixel_grid(h, w, pixel_size)
  return _taus(et.reshape(b, h * w), np.repeat(eta[0, :, 0], w), np.tile(phi[0, 0, :], h), r0,
               group)


def calo_particles(images, channel_names=None, pixel_size: float = PIXEL_SIZE):
  """(E_T [B, P], eta [P], phi [P]): the calorimeter deposits as particles. Each ECAL (or
  other energy-channel) pixel is one; the HCAL, whose images spread each 5 x 5-pixel
  tower's E_T evenly over its pixels, gives one particle per tower, at the tower centre
  (its true granularity: 25x fewer particles than its pixels). Negative values clipped."""
  x = np.asarray(images)
  names, _, _, _, calo = _channels(x.shape, channel_names)
  b, h, w, _ = x.shape
  eta, phi = pixel_grid(h, w, pixel_size)
  eta, phi = eta[0, :, 0], phi[0, 0, :]
  vals, etas, phis = [], [], []
  for i in calo:
    g, ge, gp = np.clip(x[..., i].astype(np.float64), 0.0, None), eta, phi
    if names[i] == "hcal" and h % 5 == 0 and w % 5 == 0:
      g = g.reshape(b, h // 5, 5, w // 5, 5).sum((2, 4))
      ge, gp = eta.reshape(-1, 5).mean(1), phi.reshape(-1, 5).mean(1)
    vals.append(g.reshape(b, g.shape[1] * g.shape[2]))
    etas.append(np.repeat(ge, len(gp)))
    phis.append(np.tile(gp, len(ge)))
  return np.concatenate(vals, 1), np.concatenate(etas), np.concatenate(phis)


def calo_nsubjettiness(images, channel_names=None, pixel_size: float = PIXEL_SIZE,
                       r0: float = R0, group: int = 32):
  """{tau1, tau2, tau3, tau21, tau32} [B] of raw images: τ_N summed over the calorimeter
  E_T pixels (`calo_et`, HCAL tower E_T spread over its pixels as in the images), with
  exclusive-kT axes of the `calo_particles` (ECAL pixels, HCAL towers): the clustering,
  the costly part, then runs on ~10x fewer particles, while the sum keeps the pixels'
  angular spread (on simulated top/QCD jets, τ32 summed over tower centres instead
  separated worse)."""
  x = np.asarray(images)
  et = calo_et(x, channel_names)
  b, h, w = et.shape
  eta, phi = pixel_grid(h, w, pixel_size)
  return _taus(et.reshape(b, h * w), np.repeat(eta[0, :, 0], w), np.tile(phi[0, 0, :], h), r0,
               group, calo_particles(x, channel_names, pixel_size))


# The physicist's regression estimate. ------------------------------------------------------
def pixel_estimates(images, channel_names=None, pixel_size: float = PIXEL_SIZE):
  """[B, 2] float64: the image's own jet mass (calo_mass) and Σ calorimeter E_T."""
  et = calo_et(images, channel_names)
  eta, phi = pixel_grid(et.shape[1], et.shape[2], pixel_size)
  return np.stack([_mass(et, eta, phi), et.sum((1, 2))], 1)


class PixelCalibration:
  """Least-squares linear calibration y ≈ x @ coef + intercept, fitted on train, of the
  `pixel_estimates` features x [N, F] to targets y [N] or [N, T] (jet mass, jet pT): the
  estimate a physicist makes from the pixels alone, the control for the regression stages."""

  def fit(self, x, y):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or len(x) != len(y):
      raise ValueError(f"features [N, F] and targets [N] or [N, T] expected, got {x.shape}, "
                       f"{y.shape}")
    z = np.concatenate([x, np.ones((len(x), 1))], 1)
    w, *_ = np.linalg.lstsq(z, y, rcond=None)
    self.coef, self.intercept = w[:-1], w[-1]
    return self

  def predict(self, x):
    """Calibrated estimates [N] or [N, T]."""
    return np.asarray(x, np.float64) @ self.coef + self.intercept


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
