"""Generate CMS End-to-End style jet images with Pythia 8 and FastJet.

Command line::

    python -m mae_jax.data.generate --process {qcd_quark_gluon,boosted_top} \\
        --num N --output FILE.h5 [--seed S] [--workers W] [--split 0.8,0.1,0.1]

Python::

    from mae_jax.data.generate import generate
    summary = generate("boosted_top", 1000, "top.h5", seed=0, workers=2)

Requires the ``generate`` extra (``pip install -e .[generate]``: ``pythia8mc``
and ``fastjet``); this module imports them lazily, so it can be imported
without them.

Output (the public E2E HDF5 schema)
-----------------------------------
* ``train_jet``, ``validation_jet``, ``test_jet``: float32 ``[N, 125, 125, 8]``,
  channels last, axis 1 = pseudorapidity η (increasing), axis 2 = azimuth φ
  (increasing), one compressed chunk per image (``chunks=(1,125,125,8)``;
  gzip level 4 + shuffle filter, or lzf with ``--compression lzf``).
* ``train_meta``, ``validation_meta``, ``test_meta``: float32 ``[N, 3]`` with
  columns (label, jet mass [GeV], jet pT [GeV]).  Jet mass and pT are those of
  the particle-level (generator) anti-kT jet, not of the smeared image.
* Labels: ``qcd_quark_gluon``: **1 = gluon, 0 = quark**; ``boosted_top``:
  **1 = top, 0 = QCD**.
* Classes are balanced: jet index ``i`` (0..num-1) has label 1 when ``i`` is
  even and 0 when odd.  Pairs ``(2j, 2j+1)`` are assigned to splits as a unit,
  by a permutation seeded from ``seed``, so every split is balanced (up to one
  jet when ``num`` is odd); rows inside a split are shuffled by the same seeded
  generator.  Split sizes in pairs are ``round(P*f_val)``, ``round(P*f_test)``
  and the remainder for train, with ``P = ceil(num/2)``.
* File attributes: ``channel_names``, ``meta_names``, ``process``, ``seed``,
  ``generator`` ("pythia8mc <version> + fastjet <version>"), ``pixel_size``,
  ``label_names`` (["quark", "gluon"] or ["qcd", "top"], indexed by label),
  ``label_definition``, ``units`` and every physics/detector parameter listed
  below (``jet_radius``, ``jet_pt_min`` ..., ``ecal_resolution`` ...), so a
  converter can read them.

Processes (pp at 13 TeV, Pythia 8 defaults otherwise: MPI, ISR/FSR,
hadronisation and decays on; no pile-up)
------------------------------------------------------------------------------
``qcd_quark_gluon``
    Two separate Pythia instances: quarks from ``HardQCD:qq2qq`` +
    ``HardQCD:qqbar2qqbarNew``, gluons from ``HardQCD:gg2gg`` +
    ``HardQCD:qqbar2gg``; ``PhaseSpace:pTHatMin/Max = 70/130`` GeV.  Jets:
    anti-kT R = 0.4 on all visible final-state particles.  The *leading* jet of
    the event must have 70 < pT < 100 GeV and |η| < 1.5 (about 25 % of events
    pass; the window sits inside the pTHat range, away from its upper edge)
    and must be matched within ΔR < 0.4 to an outgoing hard-process parton
    (the closest one): gluon (id 21) -> label 1 from the gluon instance, quark
    (|id| <= 5) -> label 0 from the quark instance.  Otherwise the event is
    rejected.
``boosted_top``
    Signal: ``Top:gg2ttbar`` + ``Top:qqbar2ttbar`` with hadronic W decays
    (``24:onMode = off``, ``24:onIfAny = 1 2 3 4 5``); background:
    ``HardQCD:all``; both with pTHat 400–600 GeV.  Jets: anti-kT R = 0.8; the
    leading jet must have 400 < pT < 550 GeV and |η| < 1.5.  Top jets must have
    a top quark, its b quark and both W-decay quarks (hard-process record)
    within ΔR < 0.8 of the jet axis (fully merged); QCD jets have no matching.

Events that cannot pass the truth matching are vetoed at process level with a
Pythia ``UserHooks`` (before showering/hadronisation), which is lossless: a
hard-process parton with |η| < 1.5 + 0.4 (q/g), or a top whose t, b, q, q'
all have |η| < 1.5 + 0.8 and pairwise ΔR < 1.6 (top).  The QCD background is
not vetoed.

Images (125 x 125 pixels of 0.0174 x 0.0174 in (η, φ), ECAL crystal size)
---------------------------------------------------------------------------
Centred on the jet axis (η, φ of the jet four-vector; the axis lies at the
centre of pixel (62, 62)); Δφ is wrapped into [-π, π).  All visible
final-state particles of the event that fall in the window are used (not only
jet constituents), as in the E2E detector images.  No noise, pile-up,
tracking inefficiency or shower lateral spread is simulated.  Energy channels
hold *transverse* energy / transverse momentum in GeV.  CMS-like detector:
solenoid B = 3.8 T; the position of a charged particle at a detector layer of
radius r is its initial direction with φ rotated by ``-q asin(0.3 B r / 2 pT)``
(helix from the beam line; particles with pT below ``0.3 B r / 2`` never reach
r and leave nothing there).

0. ``track_pt``: Σ pT of tracks per pixel (GeV).  Tracks = charged particles
   with pT > 0.5 GeV, |η| < 2.5, produced within 300 mm of the beam line;
   placed at their direction at the vertex; pT smeared with
   σ(pT)/pT = 0.5 % ⊕ 0.015 % × pT/GeV.
1. ``track_d0``: transverse impact parameter (mm, CMS ``dxy`` sign convention
   ``(y px - x py)/pT``, straight-line extrapolation) of the same tracks with
   respect to the nominal beam line, **pT-weighted mean per pixel**.  The
   production vertex is Pythia's ``xProd, yProd, zProd`` (mm) plus a per-event
   beam-spot offset drawn from N(0, 10 µm) in x and y; each track then gets
   Gaussian resolution smearing σ(d0) = 20 µm.  Prompt tracks therefore give
   |d0| ~ 20 µm, b/c-hadron and strange decays give larger values.
2. ``track_dz``: longitudinal impact parameter (mm) w.r.t. the event's
   primary vertex (the beam-spot z spread cancels), pT-weighted mean per
   pixel, Gaussian resolution σ(dz) = 30 µm.
3. ``ecal``: photons and electrons with |η| < 3.0 (charged ones at their
   impact φ at r = 1.29 m).  Energies are summed per pixel (crystal) and each
   crystal is smeared with σ/E = 2.8 %/√E ⊕ 12 %/E ⊕ 0.3 % (E in GeV), then
   clipped at 0 and stored as E_T (GeV).
4. ``hcal``: all hadrons (charged and neutral) with |η| < 3.0 (charged ones at
   their impact φ at r = 1.8 m), summed in towers of 5 x 5 image pixels
   (0.087 x 0.087, a 25 x 25 tower grid aligned with the image), each tower
   smeared with σ/E = 100 %/√E ⊕ 5 % and clipped at 0; the tower E_T is then
   spread uniformly over its 25 pixels (each pixel holds E_T/25, so the image
   sum equals the tower E_T).  Hadrons deposit nothing in ECAL; muons and
   neutrinos deposit nothing in either calorimeter.
5–7. ``bpix1..3``: number of charged-particle crossings per pixel of the
   barrel pixel layers at r = 29, 68, 109 mm (CMS Phase-1), |z| < 265 mm,
   for particles produced inside the layer radius, at their helix impact φ and
   direction η.

Determinism and parallelism
---------------------------
Jet indices are cut into ``workers`` contiguous slices.  Worker ``k`` runs two
Pythia instances (label 1 and label 0) seeded with
``SeedSequence([seed, k, label]).generate_state(1)[0] % 900_000_000 + 1`` and
a numpy ``PCG64`` generator per instance for the detector smearing seeded with
``SeedSequence([seed, k, label, 1])``.  The output is therefore identical for
the same (seed, workers, num), whatever the scheduling.  Workers are separate
processes (``multiprocessing``; ``fork`` unless JAX/TensorFlow is already
imported, then ``spawn``) streaming batches of images to the parent, which
writes each image straight into its row of the HDF5 file (written to
``FILE.partial`` and renamed on success); only the small meta arrays are held
in memory.  The reported rate (jets/s) counts jets written per wall-clock
second including Pythia initialisation.

Acceptance and speed (measured on a shared 2-core CPU, --num 200): q/g
about 25 % of generated events give a jet (gluon and quark alike); top about
27 % of tt̄ events give a fully merged top jet, QCD about 50 %.  Rates:
qcd_quark_gluon 32 jets/s with 1 worker, 53 with 2; boosted_top 37 jets/s
with 1 worker, 57 with 2.  Pythia's ``next()`` takes about half of the time,
the Python particle loop and PseudoJet construction most of the rest (the
awkward-array bulk interface of ``fastjet`` was slower per event than a list
of PseudoJets here); image building is ~2 ms per jet.  Output is ~3-5 kB per
jet on disk (gzip level 4 + shuffle; images are ~0.2-4 % non-zero).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import os
import queue as queue_mod
import sys
import time
import traceback
from typing import Iterator, Sequence

import numpy as np

# ----------------------------------------------------------------------------
# Constants (all written to the file attributes).
# ----------------------------------------------------------------------------
IMAGE_SIZE = 125
PIXEL_SIZE = 0.0174
CHANNEL_NAMES = ["track_pt", "track_d0", "track_dz", "ecal", "hcal", "bpix1", "bpix2", "bpix3"]
META_NAMES = ["label", "jet_mass", "jet_pt"]
SPLIT_NAMES = ("train", "validation", "test")

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

BATCH = 8  # images per message from a worker


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    name: str
    jet_radius: float
    jet_pt_min: float
    jet_pt_max: float
    jet_abs_eta_max: float
    pthat_min: float
    pthat_max: float
    settings: dict  # label -> list of Pythia settings
    label_definition: str


PROCESSES = {
    "qcd_quark_gluon": ProcessSpec(
        name="qcd_quark_gluon",
        jet_radius=0.4,
        jet_pt_min=70.0,
        jet_pt_max=100.0,
        jet_abs_eta_max=1.5,
        pthat_min=70.0,
        pthat_max=130.0,
        settings={
            1: ["HardQCD:gg2gg = on", "HardQCD:qqbar2gg = on"],
            0: ["HardQCD:qq2qq = on", "HardQCD:qqbar2qqbarNew = on"],
        },
        label_definition="1 = gluon jet (matched to a hard gluon), 0 = quark jet (matched to a hard quark |id|<=5)",
    ),
    "boosted_top": ProcessSpec(
        name="boosted_top",
        jet_radius=0.8,
        jet_pt_min=400.0,
        jet_pt_max=550.0,
        jet_abs_eta_max=1.5,
        pthat_min=400.0,
        pthat_max=600.0,
        settings={
            1: ["Top:gg2ttbar = on", "Top:qqbar2ttbar = on", "24:onMode = off", "24:onIfAny = 1 2 3 4 5"],
            0: ["HardQCD:all = on"],
        },
        label_definition="1 = fully merged hadronic top jet (t, b, q, q' within dR<0.8), 0 = QCD jet",
    ),
}

# class name per label value (index 0 -> label 0)
LABEL_NAMES = {"qcd_quark_gluon": ["quark", "gluon"], "boosted_top": ["qcd", "top"]}

COMMON_SETTINGS = [
    "Beams:eCM = 13000.",
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Random:setSeed = on",
]


# ----------------------------------------------------------------------------
# Argument handling
# ----------------------------------------------------------------------------
def _check_args(process, num, split, workers, seed):
    if process not in PROCESSES:
        raise ValueError(f"unknown process {process!r}; choose one of {sorted(PROCESSES)}")
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num <= 0:
        raise ValueError(f"num must be a positive integer, got {num!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers <= 0:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    split = tuple(float(s) for s in split)
    if len(split) != 3:
        raise ValueError(f"split needs 3 fractions (train, validation, test), got {len(split)}")
    if any(not math.isfinite(s) or s < 0 for s in split):
        raise ValueError(f"split fractions must be finite and >= 0, got {split}")
    if abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {split} (sum {sum(split):g})")
    return split


def parse_split(text: str) -> tuple:
    parts = [p for p in text.replace(" ", "").split(",")]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--split must be three comma-separated numbers, got {text!r}") from None
    return vals


# ----------------------------------------------------------------------------
# Deterministic split assignment
# ----------------------------------------------------------------------------
def assign_splits(num: int, split: Sequence[float], seed: int):
    """Return (split_of[num], row_of[num], sizes[3]) for jet indices 0..num-1.

    Jets ``2j`` (label 1) and ``2j+1`` (label 0) form pair ``j``; pairs are
    assigned to splits as a unit, so each split is balanced.
    """
    n_pairs = (num + 1) // 2
    n_val = int(round(n_pairs * split[1]))
    n_test = int(round(n_pairs * split[2]))
    n_val = min(n_val, n_pairs)
    n_test = min(n_test, n_pairs - n_val)
    n_train = n_pairs - n_val - n_test
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x5B1175])))
    perm = rng.permutation(n_pairs)
    pair_split = np.empty(n_pairs, np.int64)
    pair_split[perm[:n_train]] = 0
    pair_split[perm[n_train : n_train + n_val]] = 1
    pair_split[perm[n_train + n_val :]] = 2
    idx = np.arange(num)
    split_of = pair_split[idx // 2]
    row_of = np.empty(num, np.int64)
    sizes = []
    for s in range(3):
        members = idx[split_of == s]
        order = rng.permutation(len(members))
        row_of[members[order]] = np.arange(len(members))
        sizes.append(len(members))
    return split_of, row_of, sizes


def _pythia_seed(seed: int, worker: int, label: int) -> int:
    state = np.random.SeedSequence([seed, worker, label]).generate_state(1)[0]
    return int(state) % 900_000_000 + 1


# ----------------------------------------------------------------------------
# Image construction (pure numpy; also usable on any particle array)
# ----------------------------------------------------------------------------
def _wrap(dphi):
    return (dphi + np.pi) % (2.0 * np.pi) - np.pi


def _bend(phi, charge, pt, radius_m):
    """Azimuth of the helix at cylinder radius ``radius_m`` and a reach mask."""
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


def make_image(parts: np.ndarray, jet_eta: float, jet_phi: float, rng: np.random.Generator) -> np.ndarray:
    """Build one [125,125,8] float32 image.

    ``parts``: float64 [n, 9] of visible final-state particles with columns
    (px, py, pz, e, pdg id, charge, xProd, yProd, zProd); GeV and mm.
    ``rng`` draws the per-event beam spot and all smearing.
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
        px, py, pz, e, pid, q, vx, vy, vz, pt = (a[good] for a in (px, py, pz, e, pid, q, vx, vy, vz, pt))
    eta = np.arcsinh(pz / pt)
    phi = np.arctan2(py, px)
    absid = np.abs(pid)
    charged = q != 0
    rho = np.hypot(vx, vy)
    beamspot = rng.normal(0.0, BEAMSPOT_SIGMA_XY_MM, size=2)

    # --- tracks: pT, d0, dz -------------------------------------------------
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

    # --- ECAL: photons and electrons ---------------------------------------
    em = ((pid == 22) | (absid == 11)) & (np.abs(eta) < ECAL_ETA_MAX)
    phi_e, reach_e = _bend(phi, q, pt, ECAL_RADIUS_M)
    em &= reach_e
    ie_e, ip_e, in_e = _pixel_index(eta, phi_e, jet_eta, jet_phi)
    sel = np.flatnonzero(em & in_e)
    ecal = _smear_cells(ie_e[sel] * S + ip_e[sel], e[sel], pt[sel], _ecal_sigma, rng, S * S)
    img[:, :, 3] = ecal.reshape(S, S)

    # --- HCAL: hadrons in 5x5-pixel towers ----------------------------------
    had = (pid != 22) & (absid != 11) & (absid != 13) & (np.abs(eta) < HCAL_ETA_MAX)
    phi_h, reach_h = _bend(phi, q, pt, HCAL_RADIUS_M)
    had &= reach_h
    ie_h, ip_h, in_h = _pixel_index(eta, phi_h, jet_eta, jet_phi)
    sel = np.flatnonzero(had & in_h)
    T = S // HCAL_BLOCK
    towers = _smear_cells(
        (ie_h[sel] // HCAL_BLOCK) * T + ip_h[sel] // HCAL_BLOCK, e[sel], pt[sel], _hcal_sigma, rng, T * T
    ).reshape(T, T) / float(HCAL_BLOCK * HCAL_BLOCK)
    img[:, :, 4] = np.repeat(np.repeat(towers, HCAL_BLOCK, axis=0), HCAL_BLOCK, axis=1)

    # --- barrel pixel layers -------------------------------------------------
    for layer, r_mm in enumerate(PIXEL_LAYER_RADII_MM):
        phi_l, reach = _bend(phi, q, pt, (r_mm - np.minimum(rho, r_mm)) * 1e-3)
        z_hit = vz + (r_mm - rho) * pz / pt
        hit = charged & reach & (rho < r_mm) & (np.abs(z_hit) < PIXEL_LAYER_HALF_LENGTH_MM)
        ie_l, ip_l, in_l = _pixel_index(eta, phi_l, jet_eta, jet_phi)
        sel = np.flatnonzero(hit & in_l)
        img[:, :, 5 + layer] = np.bincount(ie_l[sel] * S + ip_l[sel], minlength=S * S).reshape(S, S)
    return img


# ----------------------------------------------------------------------------
# Pythia + FastJet event source
# ----------------------------------------------------------------------------
def _delta_r(eta1, phi1, eta2, phi2):
    return math.hypot(eta1 - eta2, (phi1 - phi2 + math.pi) % (2 * math.pi) - math.pi)


def _hard_partons(process):
    """Outgoing hard-process partons (status 23) as (id, eta, phi)."""
    out = []
    for i in range(process.size()):
        p = process[i]
        if p.status() == 23 and (p.idAbs() <= 5 or p.id() == 21):
            out.append((p.id(), p.eta(), p.phi()))
    return out


def _top_systems(process):
    """For each top in the hard process: [(eta, phi) of t, b, q, q']."""
    systems = []
    for i in range(process.size()):
        t = process[i]
        if t.idAbs() != 6:
            continue
        b = w = None
        for d in t.daughterList():
            dp = process[d]
            if dp.idAbs() == 5:
                b = dp
            elif dp.idAbs() == 24:
                w = dp
        if b is None or w is None:
            continue
        # follow W copies down to its decay products
        while True:
            dl = list(w.daughterList())
            if len(dl) == 1 and process[dl[0]].idAbs() == 24:
                w = process[dl[0]]
                continue
            break
        quarks = [process[d] for d in dl if process[d].idAbs() <= 5]
        if len(quarks) != 2:
            continue
        systems.append([(p.eta(), p.phi()) for p in (t, b, quarks[0], quarks[1])])
    return systems


def _make_hook(pythia8mc, spec: ProcessSpec, label: int):
    """A lossless process-level veto (None for the unvetoed QCD background)."""
    if spec.name == "qcd_quark_gluon":
        eta_cut = spec.jet_abs_eta_max + 0.4

        def accept(process):
            want21 = label == 1
            for pid, eta, _ in _hard_partons(process):
                if abs(eta) < eta_cut and ((pid == 21) == want21):
                    return True
            return False

    elif spec.name == "boosted_top" and label == 1:
        eta_cut = spec.jet_abs_eta_max + 0.8

        def accept(process):
            for sys_ in _top_systems(process):
                if all(abs(eta) < eta_cut for eta, _ in sys_):
                    d = sys_[1:]
                    if all(_delta_r(*d[i], *d[j]) < 1.6 for i in range(3) for j in range(i + 1, 3)):
                        return True
            return False

    else:
        return None

    class _Veto(pythia8mc.UserHooks):
        def __init__(self):
            pythia8mc.UserHooks.__init__(self)
            self.n_vetoed = 0

        def canVetoProcessLevel(self):
            return True

        def doVetoProcessLevel(self, process):
            ok = accept(process)
            if not ok:
                self.n_vetoed += 1
            return not ok

    return _Veto()


def _silence_fastjet_banner():
    import fastjet

    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        fastjet._swig.ClusterSequence.print_banner()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class _Source:
    """One Pythia instance producing accepted jets of one label."""

    MAX_FAILURES = 1000

    def __init__(self, spec: ProcessSpec, label: int, seed: int, worker: int):
        import fastjet
        import pythia8mc

        self.spec, self.label = spec, label
        self.fastjet = fastjet
        self.pythia = pythia8mc.Pythia("", False)
        settings = COMMON_SETTINGS + [
            f"Random:seed = {_pythia_seed(seed, worker, label)}",
            f"PhaseSpace:pTHatMin = {spec.pthat_min}",
            f"PhaseSpace:pTHatMax = {spec.pthat_max}",
        ] + spec.settings[label]
        for s in settings:
            if not self.pythia.readString(s):
                raise RuntimeError(f"Pythia rejected setting {s!r}")
        self.hook = _make_hook(pythia8mc, spec, label)  # keep alive
        if self.hook is not None:
            self.pythia.setUserHooksPtr(self.hook)
        if not self.pythia.init():
            raise RuntimeError(f"Pythia init failed for {spec.name} label {label}")
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, worker, label, 1])))
        self.jetdef = fastjet.JetDefinition(fastjet.antikt_algorithm, spec.jet_radius)
        self.n_next = 0
        self.n_accepted = 0

    @property
    def n_events(self) -> int:
        """Pythia events generated, including those vetoed at process level."""
        return self.n_next + (self.hook.n_vetoed if self.hook is not None else 0)

    def _visible(self):
        """Visible final-state particles (pythia8mc.Particle copies)."""
        return [p for p in self.pythia.event.particles() if p.status() > 0 and p.isVisible()]

    @staticmethod
    def _particle_array(vis):
        rows = [(p.px(), p.py(), p.pz(), p.e(), p.id(), p.charge(), p.xProd(), p.yProd(), p.zProd()) for p in vis]
        return np.array(rows, dtype=np.float64).reshape(-1, 9)

    def _matched(self, jeta, jphi) -> bool:
        spec, process = self.spec, self.pythia.process
        if spec.name == "qcd_quark_gluon":
            best, best_id = 0.4, None
            for pid, eta, phi in _hard_partons(process):
                d = _delta_r(jeta, jphi, eta, phi)
                if d < best:
                    best, best_id = d, pid
            if best_id is None:
                return False
            return (best_id == 21) if self.label == 1 else (abs(best_id) <= 5)
        if self.label == 1:  # top
            for sys_ in _top_systems(process):
                if all(_delta_r(jeta, jphi, eta, phi) < spec.jet_radius for eta, phi in sys_):
                    return True
            return False
        return True  # QCD background: no matching

    def next_jet(self):
        """Generate events until one passes; return (image, meta[3])."""
        spec, fj = self.spec, self.fastjet
        failures = 0
        while True:
            self.n_next += 1
            if not self.pythia.next():
                failures += 1
                if failures > self.MAX_FAILURES:
                    raise RuntimeError("Pythia failed to generate events repeatedly")
                continue
            vis = self._visible()
            pjs = [fj.PseudoJet(p.px(), p.py(), p.pz(), p.e()) for p in vis]
            cs = fj._swig.ClusterSequence(pjs, self.jetdef)  # keep alive while jets are used
            jets = fj.sorted_by_pt(cs.inclusive_jets(0.5 * spec.jet_pt_min))
            if not jets:
                continue
            jet = jets[0]
            jpt, jeta, jphi, jm = jet.pt(), jet.eta(), jet.phi_std(), jet.m()
            del jets, cs
            if not (spec.jet_pt_min < jpt < spec.jet_pt_max and abs(jeta) < spec.jet_abs_eta_max):
                continue
            if not self._matched(jeta, jphi):
                continue
            img = make_image(self._particle_array(vis), jeta, jphi, self.rng)
            self.n_accepted += 1
            return img, np.array([self.label, max(jm, 0.0), jpt], np.float32)


def _produce(process: str, seed: int, worker: int, indices: np.ndarray) -> Iterator:
    """Yield (indices, images, metas) batches for the given jet indices, in order."""
    spec = PROCESSES[process]
    _silence_fastjet_banner()
    sources = {1: _Source(spec, 1, seed, worker), 0: _Source(spec, 0, seed, worker)}
    buf_i, buf_img, buf_meta = [], [], []
    for i in indices:
        img, meta = sources[1 if i % 2 == 0 else 0].next_jet()
        buf_i.append(int(i))
        buf_img.append(img)
        buf_meta.append(meta)
        if len(buf_i) == BATCH:
            yield np.array(buf_i), np.stack(buf_img), np.stack(buf_meta)
            buf_i, buf_img, buf_meta = [], [], []
    if buf_i:
        yield np.array(buf_i), np.stack(buf_img), np.stack(buf_meta)
    # final statistics message
    yield {label: (s.n_events, s.n_accepted) for label, s in sources.items()}


def _worker_main(process, seed, worker, indices, out_queue):
    try:
        for item in _produce(process, seed, worker, indices):
            if isinstance(item, dict):
                out_queue.put(("done", worker, item))
            else:
                out_queue.put(("jets", worker, item))
    except BaseException:
        out_queue.put(("error", worker, traceback.format_exc()))


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------
def _versions():
    from importlib import metadata

    import fastjet

    try:
        pv = metadata.version("pythia8mc")
    except metadata.PackageNotFoundError:  # pragma: no cover
        pv = "unknown"
    fv = getattr(fastjet, "__version__", None) or metadata.version("fastjet")
    return f"pythia8mc {pv} + fastjet {fv}"


def _file_attrs(spec: ProcessSpec, seed, workers, num, split):
    return {
        "channel_names": CHANNEL_NAMES,
        "meta_names": META_NAMES,
        "process": spec.name,
        "seed": int(seed),
        "workers": int(workers),
        "num": int(num),
        "split_fractions": np.asarray(split, np.float64),
        "generator": _versions(),
        "pixel_size": PIXEL_SIZE,
        "image_size": IMAGE_SIZE,
        "image_axes": "eta, phi, channel (jet axis at the centre of pixel (62, 62))",
        "label_definition": spec.label_definition,
        "label_names": LABEL_NAMES[spec.name],
        "units": "track_pt, ecal, hcal: transverse momentum/energy in GeV; track_d0, track_dz: mm "
        "(pT-weighted mean per pixel); bpix1-3: hit counts; meta jet_mass, jet_pt: GeV (particle level)",
        "sqrt_s_gev": 13000.0,
        "pthat_min": spec.pthat_min,
        "pthat_max": spec.pthat_max,
        "jet_algorithm": "anti-kt",
        "jet_radius": spec.jet_radius,
        "jet_pt_min": spec.jet_pt_min,
        "jet_pt_max": spec.jet_pt_max,
        "jet_abs_eta_max": spec.jet_abs_eta_max,
        "pythia_settings_label1": spec.settings[1],
        "pythia_settings_label0": spec.settings[0],
        "b_field_t": B_FIELD_T,
        "track_pt_min": TRACK_PT_MIN,
        "track_abs_eta_max": TRACK_ETA_MAX,
        "track_rho_max_mm": TRACK_RHO_MAX_MM,
        "track_pt_resolution": np.asarray(TRACK_PT_RESOLUTION),
        "beamspot_sigma_xy_mm": BEAMSPOT_SIGMA_XY_MM,
        "d0_resolution_mm": D0_RESOLUTION_MM,
        "dz_resolution_mm": DZ_RESOLUTION_MM,
        "ecal_resolution": np.asarray(ECAL_RESOLUTION),
        "ecal_resolution_terms": "sigma/E = a/sqrt(E) (+) b/E (+) c, E in GeV, per crystal",
        "ecal_radius_m": ECAL_RADIUS_M,
        "hcal_resolution": np.asarray(HCAL_RESOLUTION),
        "hcal_resolution_terms": "sigma/E = a/sqrt(E) (+) c, E in GeV, per 5x5 tower",
        "hcal_radius_m": HCAL_RADIUS_M,
        "hcal_granularity_pixels": HCAL_BLOCK,
        "hcal_upsampling": "tower E_T spread uniformly over its 5x5 pixels (E_T/25 each)",
        "pixel_layer_radii_mm": np.asarray(PIXEL_LAYER_RADII_MM),
        "pixel_layer_half_length_mm": PIXEL_LAYER_HALF_LENGTH_MM,
    }


class _Progress:
    def __init__(self, total, enabled, desc):
        self.bar = None
        self.total, self.enabled, self.done, self.next_print = total, enabled, 0, 0.1
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="jet", desc=desc, dynamic_ncols=True)
            except ImportError:
                print(f"{desc}: 0/{total}", flush=True)

    def update(self, n):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.done >= self.next_print * self.total:
            print(f"  {self.done}/{self.total} jets", flush=True)
            while self.next_print * self.total <= self.done:
                self.next_print += 0.1

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _start_method() -> str:
    heavy = any(m in sys.modules for m in ("jax", "tensorflow", "torch"))
    if heavy or "fork" not in mp.get_all_start_methods():
        return "spawn"
    return "fork"


def generate(
    process: str,
    num: int,
    output: str,
    seed: int = 0,
    workers: int = 1,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    progress: bool = True,
    compression: str = "gzip",
) -> dict:
    """Generate ``num`` balanced jet images of ``process`` into the HDF5 ``output``.

    Returns a summary dict: ``counts`` {split: {"0": n, "1": n}}, ``seconds``,
    ``jets_per_second``, ``pythia_events`` and ``efficiency`` per label, etc.
    """
    split = _check_args(process, num, split, workers, seed)
    if compression not in ("gzip", "lzf"):
        raise ValueError(f"compression must be 'gzip' or 'lzf', got {compression!r}")
    import h5py

    num, workers, seed = int(num), int(workers), int(seed)
    workers = min(workers, num)
    spec = PROCESSES[process]
    split_of, row_of, sizes = assign_splits(num, split, seed)
    labels = (np.arange(num) % 2 == 0).astype(np.int64)
    slices = np.array_split(np.arange(num), workers)

    output = os.fspath(output)
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    tmp = output + ".partial"
    t0 = time.perf_counter()
    metas = [np.zeros((n, 3), np.float32) for n in sizes]
    stats = {}
    procs = []
    comp_kw = {"compression": "gzip", "compression_opts": 4} if compression == "gzip" else {"compression": "lzf"}
    bar = _Progress(num, progress, f"{process}")
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in _file_attrs(spec, seed, workers, num, split).items():
                f.attrs[k] = v
            jet_ds = []
            for name, n in zip(SPLIT_NAMES, sizes):
                jet_ds.append(
                    f.create_dataset(
                        f"{name}_jet",
                        shape=(n, IMAGE_SIZE, IMAGE_SIZE, len(CHANNEL_NAMES)),
                        maxshape=(None, IMAGE_SIZE, IMAGE_SIZE, len(CHANNEL_NAMES)),
                        dtype=np.float32,
                        chunks=(1, IMAGE_SIZE, IMAGE_SIZE, len(CHANNEL_NAMES)),
                        shuffle=True,
                        **comp_kw,
                    )
                )

            def consume(batch):
                idx, imgs, ms = batch
                for i, img, m in zip(idx, imgs, ms):
                    s, r = split_of[i], row_of[i]
                    jet_ds[s][r] = img
                    metas[s][r] = m
                bar.update(len(idx))

            if workers == 1:
                for item in _produce(process, seed, 0, slices[0]):
                    if isinstance(item, dict):
                        stats[0] = item
                    else:
                        consume(item)
            else:
                ctx = mp.get_context(_start_method())
                q = ctx.Queue(maxsize=4 * workers)
                for k in range(workers):
                    p = ctx.Process(target=_worker_main, args=(process, seed, k, slices[k], q), daemon=True)
                    p.start()
                    procs.append(p)
                done = set()
                while len(done) < workers:
                    try:
                        kind, k, payload = q.get(timeout=2.0)
                    except queue_mod.Empty:
                        for k2, p in enumerate(procs):
                            if k2 not in done and not p.is_alive():
                                raise RuntimeError(f"worker {k2} died (exit code {p.exitcode})")
                        continue
                    if kind == "jets":
                        consume(payload)
                    elif kind == "done":
                        done.add(k)
                        stats[k] = payload
                    else:
                        raise RuntimeError(f"worker {k} failed:\n{payload}")
                for p in procs:
                    p.join()
            for name, m in zip(SPLIT_NAMES, metas):
                f.create_dataset(f"{name}_meta", data=m, dtype=np.float32, chunks=None if len(m) == 0 else True)
        os.replace(tmp, output)
    except BaseException:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0

    counts = {}
    for s, name in enumerate(SPLIT_NAMES):
        lab = labels[split_of == s]
        counts[name] = {"0": int((lab == 0).sum()), "1": int((lab == 1).sum())}
    events = {lab: sum(st[lab][0] for st in stats.values()) for lab in (0, 1)}
    accepted = {lab: sum(st[lab][1] for st in stats.values()) for lab in (0, 1)}
    summary = {
        "process": process,
        "output": output,
        "num": num,
        "seed": seed,
        "workers": workers,
        "counts": counts,
        "seconds": seconds,
        "jets_per_second": num / seconds,
        "pythia_events": {str(k): v for k, v in events.items()},
        "efficiency": {str(k): accepted[k] / max(events[k], 1) for k in (0, 1)},
        "generator": _versions(),
    }
    if progress:
        print(
            f"wrote {num} jets to {output} in {seconds:.1f} s: {summary['jets_per_second']:.1f} jets/s "
            f"({workers} worker{'s' if workers > 1 else ''}); Pythia events {events[1]} (label 1) + "
            f"{events[0]} (label 0), efficiency {summary['efficiency']['1']:.3f} / {summary['efficiency']['0']:.3f}",
            flush=True,
        )
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m mae_jax.data.generate",
        description="Generate E2E-style jet images (125x125x8) with Pythia 8 + FastJet into HDF5.",
    )
    ap.add_argument("--process", required=True, help=f"one of {sorted(PROCESSES)}")
    ap.add_argument("--num", required=True, type=int, help="number of jets (classes balanced 50/50)")
    ap.add_argument("--output", required=True, help="output HDF5 file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="worker processes")
    ap.add_argument("--split", default="0.8,0.1,0.1", help="train,validation,test fractions (sum to 1)")
    ap.add_argument("--compression", default="gzip", choices=["gzip", "lzf"])
    ap.add_argument("--no-progress", action="store_true", help="no progress bar or summary line")
    args = ap.parse_args(argv)
    try:
        split = parse_split(args.split)
        _check_args(args.process, args.num, split, args.workers, args.seed)
    except ValueError as e:
        ap.error(str(e))
    summary = generate(
        args.process,
        args.num,
        args.output,
        seed=args.seed,
        workers=args.workers,
        split=split,
        progress=not args.no_progress,
        compression=args.compression,
    )
    if args.no_progress:
        print(f"{summary['jets_per_second']:.2f} jets/s")
    return summary


if __name__ == "__main__":
    main()
