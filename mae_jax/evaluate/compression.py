"""Decoding a split with a compressive model and scoring it in physics units.

The path the `compression` protocol stage takes, as functions that a test can drive with a
"perfect decoder" (`exact_codec`): a codec maps a batch (normalised images, occupied
`patch_ids`) to predicted patches at those slots; `decode_split` scatters them onto the
patch grid (patches that are not slots hold the normalised value of an empty pixel),
undoes the data normalisation (`data.meta.denormalize`) for both the decoded and the
original images, and returns both in physical units with the record bytes of every jet.
`rate_distortion` then scores decoded sets with `fidelity` beside the storage baselines.
"""

from __future__ import annotations

import numpy as np

from mae_jax.data import meta as meta_lib
from mae_jax.evaluate import fidelity, storage

# the quantities of the rate-distortion table: (fidelity key, column title)
TABLE_QUANTITIES = (("mass", "jet mass"), ("pt", "jet pT"))


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


def decode_split(pipe, split, codec, patch: int, batch_size: int, max_jets: int = 0):
  """(original [N, H, W, C], decoded [N, H, W, C], record bytes [N]) in physical units.

  `codec(batch)` -> (pred [B, T, p*p*C] at batch["patch_ids"], bytes [B]); `pipe` a
  sparse-token pipeline (data/pipeline.py) with its normalisation; `max_jets` > 0 stops
  after that many real jets (record order)."""
  stats = pipe.meta.get("channel_stats")
  shape = tuple(pipe.image_shape)
  fill = meta_lib.normalize(np.zeros(shape[-1:], np.float32), pipe.normalization, stats)
  origs, decs, sizes = [], [], []
  _, it = pipe.eval_iter(split, batch_size, batch_size)
  for batch in it:
    if "patch_ids" not in batch:
      raise ValueError("decode_split needs a sparse-token pipeline (batches with patch_ids)")
    keep = np.asarray(batch["valid"]) > 0
    pred, nbytes = codec(batch)
    dec = patches_to_images(np.asarray(pred), np.asarray(batch["patch_ids"]), patch, shape, fill)
    origs.append(meta_lib.denormalize(np.asarray(batch["image"])[keep], pipe.normalization,
                                      stats))
    decs.append(meta_lib.denormalize(dec[keep], pipe.normalization, stats))
    sizes.append(np.asarray(nbytes)[keep])
    if max_jets and sum(len(o) for o in origs) >= max_jets:
      break
  n = max_jets or None
  return (np.concatenate(origs)[:n], np.concatenate(decs)[:n], np.concatenate(sizes)[:n])


def rate_distortion(original, decoded: dict, channel_names=None, baselines=True):
  """Rows {name, bytes_per_jet, lossless, <q>_response, <q>_resolution, <q>_half_width_68}
  for every (name -> (bytes [N], decoded images)) in `decoded` and, with `baselines`, the
  storage baselines of evaluate/storage.py on the same original jets."""
  sets = [(name, np.asarray(b, np.float64).mean(), False, dec)
          for name, (b, dec) in decoded.items()]
  if baselines:
    sets += [(s.name, s.mean_bytes, s.lossless, s.decoded) for s in storage.baselines(original)]
  rows = []
  for name, nbytes, lossless, dec in sets:
    f = fidelity.fidelity(original, dec, channel_names)
    row = {"name": name, "bytes_per_jet": float(nbytes), "lossless": bool(lossless)}
    for q, _ in TABLE_QUANTITIES:
      for k in ("response", "resolution", "half_width_68"):
        row[f"{q}_{k}"] = float(f[q][k])
    rows.append(row)
  return rows
