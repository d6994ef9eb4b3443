"""Decoding a split with a compressive model and scoring it in physics units.

The path the `compression` protocol stage takes, as functions that a test can drive with a
"perfect decoder" (`exact_codec`): a codec maps a batch (normalised images, occupied
`patch_ids`) to predicted patches at those slots; `iter_decoded` scatters them onto the
patch grid (patches that are not slots hold the normalised value of an empty pixel),
undoes the data normalisation (`data.meta.denormalize`) for both the decoded and the
original images, and yields both in physical units, batch by batch, with the record bytes
and the label of every jet (`decode_split`: the same, concatenated).

`RateDistortion` scores decoded sets batch by batch beside the storage baselines of
evaluate/storage.py on the same jets: per jet the `fidelity` quantities (jet mass, pT, ...)
and, with `observables=True`, the jet observables of `baselines.observables` of the
originals and of every decoded set, so that a classifier fitted on original observables
can be scored on each (`tree_auc`). Only one batch of images per set is held at a time (a
1,000-jet split of 125×125×8 images is 0.5 GB per set, and there are ~20 baselines), and
sets whose decoded images are identical (every lossless record; the same float16 values
under another codec) are measured once. `rate_distortion` is the one-call form.

`budget_table` / `load_budgets` merge the final metrics of several `compression` runs (one
per latent budget) into one table (`python -m mae_jax.evaluate.compression ROOT ...`).
"""

from __future__ import annotations

import hashlib

import numpy as np

from mae_jax.data import meta as meta_lib
from mae_jax.evaluate import baselines as baselines_lib
from mae_jax.evaluate import fidelity, metrics, storage

# the quantities of the rate-distortion table: (fidelity key, column title)
TABLE_QUANTITIES = (("mass", "jet mass"), ("pt", "jet pT"))
ORIGINAL = "original"  # the key of the originals in RateDistortion.features


def patches_to_images(pred, patch_ids, patch: int, image_shape, fill):
  """pred [B, T, p*p*C] at grid patches `patch_ids` [B, T] (-1 = padding) -> normalised
  images [B, H, W, C]; every other patch holds `fill` [C] (numpy, `mae.patchify` order)."""
  h, w, c = image_shape
  gh, gw = h // patch, w // patch
  b = pred.shape[0]
  grid = np.broadcast_to(np.asarray(fill, np.float32), (b, gh * gw, patch * patch, c)).copy()
  rows, slots = np.nonzero(patch_ids >= 0)
  grid[rows, patch_ids[rows, slots]] = np.asarray(pred, np.float32)[rows, slots].reshape(
      -1, patch * patch, c)
  x = grid.reshape(b, gh, gw, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


def exact_codec(patch: int):
  """The perfect decoder: returns each slot's own normalised pixels (tests the path)."""
  def codec(batch):
    x = np.asarray(batch["image"], np.float32)
    b, h, w, c = x.shape
    grid = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    grid = grid.reshape(b, -1, patch * patch * c)
    ids = np.asarray(batch["patch_ids"])
    out = np.take_along_axis(grid, np.maximum(ids, 0)[..., None], axis=1)
    return np.where((ids >= 0)[..., None], out, 0.0), np.zeros(b, np.int64)
  return codec


def iter_decoded(pipe, split, codec, patch: int, batch_size: int, max_jets: int = 0):
  """Yields (original [b, H, W, C], decoded [b, H, W, C], record bytes [b], labels [b] or
  None) in physical units, the real jets of each batch in record order.

  `codec(batch)` -> (pred [B, T, p*p*C] at batch["patch_ids"], bytes [B]); `pipe` a
  sparse-token pipeline (data/pipeline.py) with its normalisation; `max_jets` > 0 stops
  after that many real jets."""
  stats = pipe.meta.get("channel_stats")
  shape = tuple(pipe.image_shape)
  fill = meta_lib.normalize(np.zeros(shape[-1:], np.float32), pipe.normalization, stats)
  seen = 0
  _, it = pipe.eval_iter(split, batch_size, batch_size)
  for batch in it:
    if "patch_ids" not in batch:
      raise ValueError("decode_split needs a sparse-token pipeline (batches with patch_ids)")
    keep = np.flatnonzero(np.asarray(batch["valid"]) > 0)
    if max_jets:
      keep = keep[:max_jets - seen]
    if not len(keep):
      break
    pred, nbytes = codec(batch)
    dec = patches_to_images(np.asarray(pred), np.asarray(batch["patch_ids"]), patch, shape, fill)
    labels = np.asarray(batch["label"])[keep] if "label" in batch else None
    yield (meta_lib.denormalize(np.asarray(batch["image"])[keep], pipe.normalization, stats),
           meta_lib.denormalize(dec[keep], pipe.normalization, stats),
           np.asarray(nbytes)[keep], labels)
    seen += len(keep)
    if max_jets and seen >= max_jets:
      break


def decode_split(pipe, split, codec, patch: int, batch_size: int, max_jets: int = 0):
  """(original [N, H, W, C], decoded [N, H, W, C], record bytes [N]) in physical units:
  `iter_decoded`, concatenated."""
  parts = list(iter_decoded(pipe, split, codec, patch, batch_size, max_jets))
  if not parts:
    raise ValueError(f"split {split!r} holds no jets")
  return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def _digest(images) -> bytes:
  x = np.ascontiguousarray(images, np.float32)
  return hashlib.blake2b(x.tobytes(), digest_size=16).digest() + repr(x.shape).encode()


class RateDistortion:
  """Per-jet measurements of the originals and of decoded sets, accumulated batch by batch
  (module doc). `add(original, {name: (bytes [b], decoded [b, H, W, C])}, labels)` per
  batch; then `rows()`, and with `observables=True` `features` ({ORIGINAL or set name:
  [N, F]}, columns `feature_names`) and `labels` for `tree_auc`. `baselines`: also every
  storage baseline of `storage.baselines` on the same original jets."""

  def __init__(self, channel_names=None, baselines: bool = True, observables: bool = False):
    self.channel_names, self.baselines, self.observables = channel_names, baselines, observables
    self.lossless, self.feature_names = {}, None
    self._bytes, self._q, self._x, self._labels = {}, {}, {}, []

  def _measure(self, images, cache):
    key = _digest(images)
    if key not in cache:
      x = taus = None
      if self.observables:
        x, self.feature_names = baselines_lib.observables(images, self.channel_names)
        taus = {k: x[:, self.feature_names.index(k)] for k in ("tau21", "tau32")}
      cache[key] = (fidelity.jet_quantities(images, self.channel_names, taus=taus), x)
    return cache[key]

  def _append(self, name, nbytes, q, x):
    self._bytes.setdefault(name, []).append(np.asarray(nbytes, np.float64))
    for k, v in q.items():
      self._q.setdefault(name, {}).setdefault(k, []).append(v)
    if x is not None:
      self._x.setdefault(name, []).append(x)

  def add(self, original, decoded: dict, labels=None):
    cache = {}
    sets = [(name, b, False, dec) for name, (b, dec) in decoded.items()]
    if self.baselines:
      sets += [(s.name, s.bytes_per_jet, s.lossless, s.decoded)
               for s in storage.baselines(original)]
    q, x = self._measure(original, cache)
    self._append(ORIGINAL, np.zeros(len(original)), q, x)
    for name, nbytes, lossless, dec in sets:
      if np.shape(dec) != np.shape(original):
        raise ValueError(f"decoded images {np.shape(dec)} of {name!r} do not match the "
                         f"originals {np.shape(original)}")
      self.lossless[name] = bool(lossless)
      self._append(name, nbytes, *self._measure(dec, cache))
    if labels is not None:
      self._labels.append(np.asarray(labels))

  @property
  def names(self):
    return [n for n in self._bytes if n != ORIGINAL]

  @property
  def labels(self):
    return np.concatenate(self._labels) if self._labels else None

  @property
  def features(self):
    return {n: np.concatenate(v) for n, v in self._x.items()}

  def quantities(self, name):
    return {k: np.concatenate(v) for k, v in self._q[name].items()}

  def rows(self):
    """[{name, bytes_per_jet, lossless, <q>_response, <q>_resolution, <q>_half_width_68}]
    of every decoded set, in the order added (the named sets, then the baselines)."""
    q0, rows = self.quantities(ORIGINAL), []
    for name in self.names:
      qd = self.quantities(name)
      row = {"name": name, "bytes_per_jet": float(np.concatenate(self._bytes[name]).mean()),
             "lossless": self.lossless[name]}
      for k, _ in TABLE_QUANTITIES:
        f = fidelity.response_resolution(q0[k], qd[k])
        for s in ("response", "resolution", "half_width_68"):
          row[f"{k}_{s}"] = float(f[s])
      rows.append(row)
    return rows


def rate_distortion(original, decoded: dict, channel_names=None, baselines=True):
  """Rows {name, bytes_per_jet, lossless, <q>_response, <q>_resolution, <q>_half_width_68}
  for every (name -> (bytes [N], decoded images)) in `decoded` and, with `baselines`, the
  storage baselines of evaluate/storage.py on the same original jets."""
  acc = RateDistortion(channel_names, baselines)
  acc.add(original, decoded)
  return acc.rows()


def tree_auc(scores: dict, labels, n_bootstrap: int = 200, seed: int = 0):
  """AUCs of one classifier's scores on the originals' features and on each decoded set's.

  `scores`: {ORIGINAL: [N], name: [N], ...}. Returns {name: {"auc", "auc_std", "diff",
  "diff_std", "diff_sigma"}}: diff = AUC(set) - AUC(originals), its std over the same
  stratified bootstrap resamples of the jets for both (paired), diff_sigma = diff /
  diff_std (0 when the scores are identical, None when only the std is 0). One set of
  resamples serves every set."""
  y = np.asarray(labels).astype(np.int64)
  names = list(scores)
  s = {n: np.asarray(scores[n], np.float64) for n in names}
  auc = {n: metrics.roc_auc(y, s[n]) for n in names}
  rng = np.random.default_rng(seed)
  draws = {n: np.empty(n_bootstrap) for n in names}
  same = {n: np.array_equal(s[n], s[ORIGINAL]) for n in names}
  for i in range(n_bootstrap):
    idx = metrics._bootstrap_indices(rng, y, len(y), True)
    base = metrics.roc_auc(y[idx], s[ORIGINAL][idx])
    for n in names:
      draws[n][i] = base if same[n] else metrics.roc_auc(y[idx], s[n][idx])
  out = {}
  for n in names:
    diff = auc[n] - auc[ORIGINAL]
    dstd = float(np.std(draws[n] - draws[ORIGINAL], ddof=1)) if n_bootstrap > 1 else float("nan")
    sigma = 0.0 if diff == 0 and dstd == 0 else (diff / dstd if dstd > 0 else None)
    out[n] = {"auc": float(auc[n]), "auc_std": float(np.std(draws[n], ddof=1)),
              "diff": float(diff), "diff_std": dstd, "diff_sigma": sigma}
  return out


# Several budgets in one table. --------------------------------------------------------------
# issue 27's goal: a latent of at most 256 bytes per jet whose decoded jets keep the jet-mass
# resolution within 5%, the pT resolution within 2% and the observable trees' test AUC within
# 0.005 of the originals' (a storage baseline's "latent" is its whole record)
GOAL = {"latent_bytes": 256, "mass_resolution": 0.05, "pt_resolution": 0.02,
        "tree_auc_diff": 0.005}
MAE_PREFIX = "compressive"  # how a row of the model (not a baseline) is named


def load_budgets(paths):
  """Final metrics of `compression` runs: each path a protocol root (its
  seed*/compression/final_metrics.json, first seed), a stage workdir or the file itself;
  sorted by latent bytes. Each gets "path" (the file read)."""
  import glob
  import json
  import os
  finals = []
  for p in paths:
    if os.path.isdir(p):
      found = sorted(glob.glob(os.path.join(p, "final_metrics.json")) or
                     glob.glob(os.path.join(p, "seed*", "compression", "final_metrics.json")))
      if not found:
        raise FileNotFoundError(f"{p}: no final_metrics.json of a compression stage in it or "
                                "in its seed*/compression/")
      p = found[0]
    with open(p) as f:
      final = json.load(f)
    if "rate_distortion" not in final:
      raise ValueError(f"{p} is not the final metrics of a compression stage (no "
                       "rate_distortion)")
    finals.append({**final, "path": p})
  return sorted(finals, key=lambda f: f["latent_bytes"])


def goal_misses(row, latent_bytes=None, size: bool = True):
  """The goal's criteria a row misses, as short strings ([] = meets the goal); size=False:
  the fidelity criteria only (mass, pT, tree AUC), whatever the bytes."""
  misses = []
  nbytes = row["bytes_per_jet"] if latent_bytes is None else latent_bytes
  if size and nbytes > GOAL["latent_bytes"]:
    misses.append(f"{nbytes:,.0f} B > {GOAL['latent_bytes']}")
  for key, what in (("mass_resolution", "mass"), ("pt_resolution", "pT")):
    v = row.get(key)
    if v is None or not np.isfinite(v) or v > GOAL[key]:
      misses.append(f"{what} {v:.3g} > {GOAL[key]:g} (×{v / GOAL[key]:.1f})"
                    if v is not None and np.isfinite(v) else f"{what} not measured")
  d = row.get("tree_auc_diff")
  if d is not None and abs(d) > GOAL["tree_auc_diff"]:
    misses.append(f"ΔAUC {d:+.4f}")
  return misses


def budget_rows(finals):
  """(MAE rows, one per final, with "latent_bytes"; baseline rows of the first final)."""
  mae, base = [], []
  for i, f in enumerate(finals):
    for r in f["rate_distortion"]:
      if r["name"].startswith(MAE_PREFIX):
        mae.append({**r, "latent_bytes": f["latent_bytes"], "latents": f["latents"],
                    "latent_dim": f["latent_dim"], "test_jets": f.get("test/examples")})
      elif i == 0:
        base.append({**r, "latent_bytes": r["bytes_per_jet"]})
  return mae, base


def _cell(v, fmt="{:.3g}"):
  return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


def budget_table(finals) -> str:
  """Markdown: one row per budget of the compressive MAE, then the storage baselines of the
  first run (same test jets when the runs share --data and --compression-jets), each with
  bytes per jet, jet-mass and pT response / resolution / 68% half-width, the observable
  trees' AUC on the decoded jets and its paired difference from the originals', and what
  it misses of the goal (GOAL)."""
  mae, base = budget_rows(finals)
  f0 = finals[0]
  orig = f0.get("trees", {}).get("original") or {}
  jets = sorted({int(f.get("test/examples", 0)) for f in finals})
  lines = [f"Test jets: {', '.join(map(str, jets))} (the baselines: those of the "
           f"{f0['latents']}×{f0['latent_dim']} run).",
           "Goal (issue 27): latent ≤ {latent_bytes} bytes per jet, jet-mass resolution ≤ "
           "{mass_resolution:g}, jet-pT resolution ≤ {pt_resolution:g}, observable-tree AUC "
           "within {tree_auc_diff:g} of the originals'.".format(**GOAL)]
  if orig:
    lines.append(f"Observable trees on the original test jets: AUC {orig['auc']:.4f} ± "
                 f"{orig['auc_std']:.4f}.")
  lines += ["", "| representation | bytes per jet (latent) | mass response | mass resolution | "
            "mass 68% | pT response | pT resolution | pT 68% | tree AUC | ΔAUC vs originals "
            "(σ) | misses the goal by |", "|" + "---|" * 11]
  for r in mae + sorted(base, key=lambda r: r["bytes_per_jet"]):
    is_mae = r["name"].startswith(MAE_PREFIX)
    name = f"**{r['name']}**" if is_mae else r["name"]
    size = (f"{r['bytes_per_jet']:,.0f} ({r['latent_bytes']:,})" if is_mae
            else f"{r['bytes_per_jet']:,.0f}")
    auc = (f"{r['tree_auc']:.4f} ± {r['tree_auc_std']:.4f}" if r.get("tree_auc") is not None
           else "—")
    diff = "—"
    if r.get("tree_auc_diff") is not None:
      sig = r.get("tree_auc_diff_sigma")
      diff = f"{r['tree_auc_diff']:+.4f}" + (f" ({sig:+.1f}σ)" if sig is not None else "")
    misses = goal_misses(r, r["latent_bytes"])
    lines.append(f"| {name} | {size} | {_cell(r['mass_response'], '{:.4f}')} "
                 f"| {_cell(r['mass_resolution'])} | {_cell(r['mass_half_width_68'])} "
                 f"| {_cell(r['pt_response'], '{:.4f}')} | {_cell(r['pt_resolution'])} "
                 f"| {_cell(r['pt_half_width_68'])} | {auc} | {diff} "
                 f"| {'; '.join(misses) or 'meets it'} |")
  lines.append("")
  for what, rows in (("compressive MAE", mae), ("storage baseline", base)):
    full = [r for r in rows if not goal_misses(r, r["latent_bytes"])]
    fid = sorted((r for r in rows if not goal_misses(r, r["latent_bytes"], size=False)),
                 key=lambda r: r["latent_bytes"])
    lines.append(f"- {what}: " + (f"meets the goal: {full[0]['name']}" if full else
                                  "none meets the goal") + "; smallest that meets its fidelity "
                 "criteria at any size: " + (f"{fid[0]['name']} ({fid[0]['bytes_per_jet']:,.0f} "
                                             "bytes per jet)" if fid else "none"))
  return "\n".join(lines)
