"""`generate`: jets from the worker pool into one HDF5 file in the public E2E schema.

Output:
  * `train_jet`, `validation_jet`, `test_jet`: float32 `[N, 125, 125, 8]`,
    channels last, axis 1 = pseudorapidity η (increasing), axis 2 = azimuth φ
    (increasing), one compressed chunk per image (`chunks=(1,125,125,8)`; gzip
    level 4 + shuffle filter, or lzf with `--compression lzf`).
  * `train_meta`, `validation_meta`, `test_meta`: float32 `[N, 3]` with columns
    (label, jet mass [GeV], jet pT [GeV]). Jet mass and pT are those of the
    particle-level (generator) anti-kT jet, not of the smeared image.
  * Labels: `qcd_quark_gluon`: **1 = gluon, 0 = quark**; `boosted_top`:
    **1 = top, 0 = QCD**.
  * Classes are balanced: jet index `i` (0..num-1) has label 1 when `i` is even
    and 0 when odd. Pairs `(2j, 2j+1)` are assigned to splits as a unit, by a
    permutation seeded from `seed`, so every split is balanced (up to one jet
    when `num` is odd); rows inside a split are shuffled by the same seeded
    generator. Split sizes in pairs are `round(P*f_val)`, `round(P*f_test)` and
    the remainder for train, with `P = ceil(num/2)`.
  * File attributes: `channel_names`, `meta_names`, `process`, `seed`,
    `generator` ("pythia8mc <version> + fastjet <version>"), `pixel_size`,
    `label_names` (["quark", "gluon"] or ["qcd", "top"], indexed by label),
    `label_definition`, `units` and every physics/detector parameter of
    `events` and `detector` (`jet_radius`, `jet_pt_min` ..., `ecal_resolution`
    ...), so a converter can read them.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Sequence

import numpy as np

from mae_jax.data.schemas import SPLITS
from mae_jax.simulation import detector, events

META_NAMES = ["label", "jet_mass", "jet_pt"]


def check_args(process, num, split, workers, seed) -> tuple:
  """The arguments of `generate` checked (ValueError otherwise); returns `split` as a tuple."""
  if process not in events.PROCESSES:
    raise ValueError(f"unknown process {process!r}; choose one of {sorted(events.PROCESSES)}")
  for name, value, minimum in (("num", num, 1), ("workers", workers, 1), ("seed", seed, 0)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
      kind = "positive" if minimum else "non-negative"
      raise ValueError(f"{name} must be a {kind} integer, got {value!r}")
  split = tuple(float(s) for s in split)
  if len(split) != 3:
    raise ValueError(f"split needs 3 fractions (train, validation, test), got {len(split)}")
  if any(not math.isfinite(s) or s < 0 for s in split):
    raise ValueError(f"split fractions must be finite and >= 0, got {split}")
  if abs(sum(split) - 1.0) > 1e-6:
    raise ValueError(f"split fractions must sum to 1, got {split} (sum {sum(split):g})")
  return split


def assign_splits(num: int, split: Sequence[float], seed: int):
  """Return (split_of[num], row_of[num], sizes[3]) for jet indices 0..num-1.

  Jets `2j` (label 1) and `2j+1` (label 0) form pair `j`; pairs are
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


def _file_attrs(spec: events.ProcessSpec, seed, workers, num, split) -> dict:
  """Every file attribute: the run, the process and the detector parameters."""
  return {
      "channel_names": detector.CHANNEL_NAMES,
      "meta_names": META_NAMES,
      "process": spec.name,
      "seed": int(seed),
      "workers": int(workers),
      "num": int(num),
      "split_fractions": np.asarray(split, np.float64),
      "generator": events.versions(),
      "pixel_size": detector.PIXEL_SIZE,
      "image_size": detector.IMAGE_SIZE,
      "image_axes": "eta, phi, channel (jet axis at the centre of pixel (62, 62))",
      "label_definition": spec.label_definition,
      "label_names": list(spec.label_names),
      "units": "track_pt, ecal, hcal: transverse momentum/energy in GeV; track_d0, track_dz: mm "
      "(pT-weighted mean per pixel); bpix1-3: hit counts; meta jet_mass, jet_pt: GeV "
      "(particle level)",
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
      "b_field_t": detector.B_FIELD_T,
      "track_pt_min": detector.TRACK_PT_MIN,
      "track_abs_eta_max": detector.TRACK_ETA_MAX,
      "track_rho_max_mm": detector.TRACK_RHO_MAX_MM,
      "track_pt_resolution": np.asarray(detector.TRACK_PT_RESOLUTION),
      "beamspot_sigma_xy_mm": detector.BEAMSPOT_SIGMA_XY_MM,
      "d0_resolution_mm": detector.D0_RESOLUTION_MM,
      "dz_resolution_mm": detector.DZ_RESOLUTION_MM,
      "ecal_resolution": np.asarray(detector.ECAL_RESOLUTION),
      "ecal_resolution_terms": "sigma/E = a/sqrt(E) (+) b/E (+) c, E in GeV, per crystal",
      "ecal_radius_m": detector.ECAL_RADIUS_M,
      "hcal_resolution": np.asarray(detector.HCAL_RESOLUTION),
      "hcal_resolution_terms": "sigma/E = a/sqrt(E) (+) c, E in GeV, per 5x5 tower",
      "hcal_radius_m": detector.HCAL_RADIUS_M,
      "hcal_granularity_pixels": detector.HCAL_BLOCK,
      "hcal_upsampling": "tower E_T spread uniformly over its 5x5 pixels (E_T/25 each)",
      "pixel_layer_radii_mm": np.asarray(detector.PIXEL_LAYER_RADII_MM),
      "pixel_layer_half_length_mm": detector.PIXEL_LAYER_HALF_LENGTH_MM,
  }


class _Progress:
  """A tqdm bar when tqdm is installed, else a line every 10 % of the jets."""

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
  """Generate `num` balanced jet images of `process` into the HDF5 `output`.

  Returns a summary dict: `counts` {split: {"0": n, "1": n}}, `seconds`,
  `jets_per_second`, `pythia_events` and `efficiency` per label, etc.
  """
  split = check_args(process, num, split, workers, seed)
  if compression not in ("gzip", "lzf"):
    raise ValueError(f"compression must be 'gzip' or 'lzf', got {compression!r}")
  import h5py

  num, workers, seed = int(num), int(workers), int(seed)
  workers = min(workers, num)
  spec = events.PROCESSES[process]
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
  comp_kw = ({"compression": "gzip", "compression_opts": 4} if compression == "gzip"
             else {"compression": "lzf"})
  bar = _Progress(num, progress, f"{process}")
  try:
    with h5py.File(tmp, "w") as f:
      for k, v in _file_attrs(spec, seed, workers, num, split).items():
        f.attrs[k] = v
      shape = (detector.IMAGE_SIZE, detector.IMAGE_SIZE, len(detector.CHANNEL_NAMES))
      jet_ds = []
      for name, n in zip(SPLITS, sizes):
        jet_ds.append(
            f.create_dataset(
                f"{name}_jet",
                shape=(n, *shape),
                maxshape=(None, *shape),
                dtype=np.float32,
                chunks=(1, *shape),
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

      with contextlib.closing(events.run_workers(process, seed, slices)) as messages:
        for kind, k, payload in messages:
          if kind == "jets":
            consume(payload)
          else:
            stats[k] = payload
      for name, m in zip(SPLITS, metas):
        f.create_dataset(f"{name}_meta", data=m, dtype=np.float32,
                         chunks=None if len(m) == 0 else True)
    os.replace(tmp, output)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  finally:
    bar.close()
  seconds = time.perf_counter() - t0

  counts = {}
  for s, name in enumerate(SPLITS):
    lab = labels[split_of == s]
    counts[name] = {"0": int((lab == 0).sum()), "1": int((lab == 1).sum())}
  n_events = {lab: sum(st[lab][0] for st in stats.values()) for lab in (0, 1)}
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
      "pythia_events": {str(k): v for k, v in n_events.items()},
      "efficiency": {str(k): accepted[k] / max(n_events[k], 1) for k in (0, 1)},
      "generator": events.versions(),
  }
  if progress:
    eff = summary["efficiency"]
    print(
        f"wrote {num} jets to {output} in {seconds:.1f} s: {summary['jets_per_second']:.1f} jets/s "
        f"({workers} worker{'s' if workers > 1 else ''}); Pythia events {n_events[1]} (label 1) + "
        f"{n_events[0]} (label 0), efficiency {eff['1']:.3f} / {eff['0']:.3f}",
        flush=True,
    )
  return summary

