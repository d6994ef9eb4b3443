"""The detector model: visible final-state particles -> one 125x125x8 jet image.

Images are 125 x 125 pixels of 0.0174 x 0.0174 in (η, φ), the ECAL crystal
size, centred on the jet axis (η, φ of the jet four-vector; the axis lies at
the centre of pixel (62, 62)); Δφ is wrapped into [-π, π). All visible
final-state particles of the event that fall in the window are used (not only
jet constituents), as in the E2E detector images. No noise, pile-up, tracking
inefficiency or shower lateral spread is simulated. Energy channels hold
*transverse* energy / transverse momentum in GeV. CMS-like detector: solenoid
B = 3.8 T; the position of a charged particle at a detector layer of radius r
is its initial direction with φ rotated by `-q asin(0.3 B r / 2 pT)` (helix
from the beam line; particles with pT below `0.3 B r / 2` never reach r and
leave nothing there).

Channels:
  0. `track_pt`: Σ pT of tracks per pixel (GeV). Tracks = charged particles
     with pT > 0.5 GeV, |η| < 2.5, produced within 300 mm of the beam line;
     placed at their direction at the vertex; pT smeared with
     σ(pT)/pT = 0.5 % ⊕ 0.015 % × pT/GeV.
  1. `track_d0`: transverse impact parameter (mm, CMS `dxy` sign convention
     `(y px - x py)/pT`, straight-line extrapolation) of the same tracks with
     respect to the nominal beam line, **pT-weighted mean per pixel**. The
     production vertex is Pythia's `xProd, yProd, zProd` (mm) plus a per-event
     beam-spot offset drawn from N(0, 10 µm) in x and y; each track then gets
     Gaussian resolution smearing σ(d0) = 20 µm. Prompt tracks therefore give
     |d0| ~ 20 µm, b/c-hadron and strange decays give larger values.
  2. `track_dz`: longitudinal impact parameter (mm) w.r.t. the event's primary
     vertex (the beam-spot z spread cancels), pT-weighted mean per pixel,
     Gaussian resolution σ(dz) = 30 µm.
  3. `ecal`: photons and electrons with |η| < 3.0 (charged ones at their
     impact φ at r = 1.29 m). Energies are summed per pixel (crystal) and each
     crystal is smeared with σ/E = 2.8 %/√E ⊕ 12 %/E ⊕ 0.3 % (E in GeV), then
     clipped at 0 and stored as E_T (GeV).
  4. `hcal`: all hadrons (charged and neutral) with |η| < 3.0 (charged ones at
     their impact φ at r = 1.8 m), summed in towers of 5 x 5 image pixels
     (0.087 x 0.087, a 25 x 25 tower grid aligned with the image), each tower
     smeared with σ/E = 100 %/√E ⊕ 5 % and clipped at 0; the tower E_T is then
     spread uniformly over its 25 pixels (each pixel holds E_T/25, so the
     image sum equals the tower E_T). Hadrons deposit nothing in ECAL; muons
     and neutrinos deposit nothing in either calorimeter.
  5–7. `bpix1..3`: number of charged-particle crossings per pixel of the
     barrel pixel layers at r = 29, 68, 109 mm (CMS Phase-1), |z| < 265 mm,
     for particles produced inside the layer radius, at their helix impact φ
     and direction η.

Every constant below is written to the file attributes by `writer`.
"""

from __future__ import annotations

import numpy as np

from mae_jax.data.schemas import CHANNELS_8

IMAGE_SIZE = 125
PIXEL_SIZE = 0.0174
CHANNEL_NAMES = CHANNELS_8  # the image channels in order: those of the public E2E top files

B_FIELD_T = 3.8
TRACK_PT_MIN = 0.5  # GeV
TRACK_ETA_MAX = 2.5
TRACK_RHO_MAX_MM = 300.0
TRACK_PT_RESOLUTION = (0.005, 0.00015)  # sigma/pT = a (+) b*pT
BEAMSPOT_SIGMA_XY_MM = 0.010
D0_RESOLUTION_MM = 0.020
DZ_RESOLUTION_MM = 0.030
ECAL_RADIUS_M = 1.29
ECAL_ETA_MAX = 3.0
ECAL_RESOLUTION = (0.028, 0.12, 0.003)  # stochastic, noise, constant
HCAL_RADIUS_M = 1.8
HCAL_ETA_MAX = 3.0
HCAL_RESOLUTION = (1.0, 0.05)  # stochastic, constant
HCAL_BLOCK = 5
PIXEL_LAYER_RADII_MM = (29.0, 68.0, 109.0)
PIXEL_LAYER_HALF_LENGTH_MM = 265.0


def _wrap(dphi):
  return (dphi + np.pi) % (2.0 * np.pi) - np.pi


def _bend(phi, charge, pt, radius_m):
  """Azimuth of the helix at cylinder radius `radius_m` and a reach mask."""
  s = 0.3 * B_FIELD_T * radius_m / (2.0 * np.maximum(pt, 1e-12))
  reach = (charge == 0) | (s < 1.0)
  return phi - charge * np.arcsin(np.minimum(s, 1.0)), reach


def _pixel_index(eta, phi, jet_eta, jet_phi):
  half = IMAGE_SIZE / 2.0
  ie = np.floor((eta - jet_eta) / PIXEL_SIZE + half).astype(np.int64)
  ip = np.floor(_wrap(phi - jet_phi) / PIXEL_SIZE + half).astype(np.int64)
  inside = (ie >= 0) & (ie < IMAGE_SIZE) & (ip >= 0) & (ip < IMAGE_SIZE)
  return ie, ip, inside


def _smear_cells(flat, e, et, rel_sigma, rng, ncells):
  """Sum E and E_T per cell, smear each occupied cell by rel_sigma(E)."""
  out = np.zeros(ncells, np.float64)
  if flat.size == 0:
    return out
  cells, inv = np.unique(flat, return_inverse=True)
  e_sum = np.bincount(inv, weights=e)
  et_sum = np.bincount(inv, weights=et)
  sigma = rel_sigma(np.maximum(e_sum, 1e-9))
  factor = np.maximum(1.0 + sigma * rng.standard_normal(cells.size), 0.0)
  out[cells] = et_sum * factor
  return out


def _ecal_sigma(e):
  a, b, c = ECAL_RESOLUTION
  return np.sqrt((a / np.sqrt(e)) ** 2 + (b / e) ** 2 + c**2)


def _hcal_sigma(e):
  a, c = HCAL_RESOLUTION
  return np.sqrt((a / np.sqrt(e)) ** 2 + c**2)


def make_image(parts: np.ndarray, jet_eta: float, jet_phi: float,
               rng: np.random.Generator) -> np.ndarray:
  """Build one [125,125,8] float32 image.

  `parts`: float64 [n, 9] of visible final-state particles with columns
  (px, py, pz, e, pdg id, charge, xProd, yProd, zProd); GeV and mm.
  `rng` draws the per-event beam spot and all smearing.
  """
  S = IMAGE_SIZE
  img = np.zeros((S, S, len(CHANNEL_NAMES)), np.float32)
  px, py, pz, e = parts[:, 0], parts[:, 1], parts[:, 2], parts[:, 3]
  pid = parts[:, 4].astype(np.int64)
  q = parts[:, 5]
  vx, vy, vz = parts[:, 6], parts[:, 7], parts[:, 8]
  pt = np.hypot(px, py)
  good = pt > 1e-6
  if not np.all(good):
    px, py, pz, e, pid, q, vx, vy, vz, pt = (
        a[good] for a in (px, py, pz, e, pid, q, vx, vy, vz, pt))
  eta = np.arcsinh(pz / pt)
  phi = np.arctan2(py, px)
  absid = np.abs(pid)
  charged = q != 0
  rho = np.hypot(vx, vy)
  beamspot = rng.normal(0.0, BEAMSPOT_SIGMA_XY_MM, size=2)

  def hits(mask, radius_m):
    """Pixel row, column and particle index of the `mask` particles that reach the layer
    at `radius_m` and land in the image (charged ones at their helix φ there)."""
    phi_r, reach = _bend(phi, q, pt, radius_m)
    ie_r, ip_r, inside_r = _pixel_index(eta, phi_r, jet_eta, jet_phi)
    sel_r = np.flatnonzero(mask & reach & inside_r)
    return ie_r[sel_r], ip_r[sel_r], sel_r

  # Tracks: pT, d0, dz.
  trk = charged & (pt > TRACK_PT_MIN) & (np.abs(eta) < TRACK_ETA_MAX) & (rho < TRACK_RHO_MAX_MM)
  ie, ip, inside = _pixel_index(eta, phi, jet_eta, jet_phi)
  sel = np.flatnonzero(trk & inside)
  # draw all track randoms with fixed shapes (determinism independent of branches)
  n_trk = sel.size
  r_pt, r_d0, r_dz = rng.standard_normal((3, n_trk))
  if n_trk:
    tpt = pt[sel]
    a, b = TRACK_PT_RESOLUTION
    tpt_s = np.maximum(tpt * (1.0 + np.hypot(a, b * tpt) * r_pt), 0.0)
    x = vx[sel] + beamspot[0]
    y = vy[sel] + beamspot[1]
    tpx, tpy, tpz = px[sel], py[sel], pz[sel]
    d0 = (y * tpx - x * tpy) / tpt + D0_RESOLUTION_MM * r_d0
    # dz w.r.t. the primary vertex at (beamspot, z = 0): z at closest approach
    dz = vz[sel] - (vx[sel] * tpx + vy[sel] * tpy) * tpz / tpt**2 + DZ_RESOLUTION_MM * r_dz
    flat = ie[sel] * S + ip[sel]
    w = np.bincount(flat, weights=tpt_s, minlength=S * S)
    wd0 = np.bincount(flat, weights=tpt_s * d0, minlength=S * S)
    wdz = np.bincount(flat, weights=tpt_s * dz, minlength=S * S)
    nz = w > 0
    d0_img = np.zeros(S * S)
    dz_img = np.zeros(S * S)
    d0_img[nz] = wd0[nz] / w[nz]
    dz_img[nz] = wdz[nz] / w[nz]
    img[:, :, 0] = w.reshape(S, S)
    img[:, :, 1] = d0_img.reshape(S, S)
    img[:, :, 2] = dz_img.reshape(S, S)

  # ECAL: photons and electrons.
  em = ((pid == 22) | (absid == 11)) & (np.abs(eta) < ECAL_ETA_MAX)
  ie_e, ip_e, sel = hits(em, ECAL_RADIUS_M)
  ecal = _smear_cells(ie_e * S + ip_e, e[sel], pt[sel], _ecal_sigma, rng, S * S)
  img[:, :, 3] = ecal.reshape(S, S)

  # HCAL: hadrons in 5x5-pixel towers.
  had = (pid != 22) & (absid != 11) & (absid != 13) & (np.abs(eta) < HCAL_ETA_MAX)
  ie_h, ip_h, sel = hits(had, HCAL_RADIUS_M)
  T = S // HCAL_BLOCK
  tower = (ie_h // HCAL_BLOCK) * T + ip_h // HCAL_BLOCK
  towers = _smear_cells(tower, e[sel], pt[sel], _hcal_sigma, rng, T * T)
  towers = towers.reshape(T, T) / float(HCAL_BLOCK * HCAL_BLOCK)
  img[:, :, 4] = np.repeat(np.repeat(towers, HCAL_BLOCK, axis=0), HCAL_BLOCK, axis=1)

  # Barrel pixel layers.
  for layer, r_mm in enumerate(PIXEL_LAYER_RADII_MM):
    z_hit = vz + (r_mm - rho) * pz / pt
    crossing = charged & (rho < r_mm) & (np.abs(z_hit) < PIXEL_LAYER_HALF_LENGTH_MM)
    ie_l, ip_l, _ = hits(crossing, (r_mm - np.minimum(rho, r_mm)) * 1e-3)
    img[:, :, 5 + layer] = np.bincount(ie_l * S + ip_l, minlength=S * S).reshape(S, S)
  return img

