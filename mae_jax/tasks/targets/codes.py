"""Discrete code targets (MPM-style, as masked particle modelling predicts tokens): each
masked patch's target is its code in a k-means codebook, the loss the cross-entropy of the
decoder's code logits (its `pred` layer is `task.codebook_size` wide: `pred_dim` below).

The codebook, fitted ONCE when the task is built from the data (`Targets.from_data`):
  vectors  every OCCUPIED patch (any pixel off the empty value) of `task.codebook_jets` jets
           drawn (seeded) from the train split, in the model's normalised units, p*p*C each
           in `patchify` order;
  k-means  K - 1 centroids (K = `task.codebook_size`): k-means++ seeding from `config.seed`,
           then ITERATIONS Lloyd iterations in float64 numpy (it stops early only once the
           assignment no longer changes, when further iterations would change nothing);
           an empty cluster keeps its centroid;
  code 0   reserved for empty patches; its centroid is the empty patch, so the decoder learns
           occupancy too (dense tokens: most masked patches are empty; sparse tokens: the
           `empty_queries`).
It is saved as WORKDIR/codebook.npy (centroids [K, p*p*C] float32, row 0 = empty) and
codebook.json (how it was fitted, code frequencies, inertia per iteration). A run whose
workdir holds them reuses them, so a resumed run has the same targets; a codebook fitted
with other settings there is an error.

A slot's code is 0 if its patch is empty, else 1 + argmin_k |x - c_k|^2 over the fitted
centroids (float32). Evaluation reports masked_ce (the loss), masked_ce_predict_frequencies
(the cross-entropy of predicting the fit's code frequencies, add-one smoothed) and
masked_code_accuracy. `decode` maps logits to pixels, the argmax code's centroid, for the
reconstruction numbers and figures: a quantised reconstruction, which cannot beat the
codebook's own quantisation error.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.errors import UsageError
from mae_jax.models import mae as mae_lib

EMPTY = 0  # the reserved code of empty patches
ITERATIONS = 20  # Lloyd iterations (a fixed budget: the fit takes seconds, not minutes)
EMPTY_TOL = 1e-6  # |pixel - empty value| <= EMPTY_TOL (1 + |empty value|): an empty pixel
FILE, RECORD = "codebook.npy", "codebook.json"
_CHUNK = 16384  # rows per distance block (float64 [chunk, K] stays small)


def pred_dim(config) -> int:
  """The decoder's output width: one logit per code."""
  return int(config.task.codebook_size)


def fit_settings(config) -> dict:
  """What decides the codebook; a saved one fitted otherwise is not reused."""
  return {"codebook_size": int(config.task.codebook_size),
          "codebook_jets": int(config.task.codebook_jets), "seed": int(config.seed),
          "patch": int(config.model.patch), "normalization": config.data.normalization,
          "split": config.data.train_split, "iterations": ITERATIONS}


def patchify_np(images, patch: int) -> np.ndarray:
  """numpy `mae.patchify`: [B, H, W, C] -> [B, N, p*p*C], pixel order (row, col, channel)."""
  b, h, w, c = images.shape
  x = np.asarray(images).reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def is_occupied(vectors, empty, xp=np):
  """[..., D] patch vectors -> [...] bool: any pixel off the empty patch `empty` [D]."""
  return xp.any(xp.abs(vectors - empty) > EMPTY_TOL * (1 + xp.abs(empty)), axis=-1)


def sq_distances(x, centroids) -> np.ndarray:
  """Squared distances [n, K] in float64 (|x|^2 - 2 x.c + |c|^2)."""
  x = np.asarray(x, np.float64)
  c = np.asarray(centroids, np.float64)
  d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
  return np.maximum(d, 0.0)


def assign(x, centroids):
  """(nearest centroid [n] int64, its squared distance [n] float64), in row blocks."""
  labels, dist = np.empty(len(x), np.int64), np.empty(len(x), np.float64)
  for i in range(0, len(x), _CHUNK):
    d = sq_distances(x[i:i + _CHUNK], centroids)
    labels[i:i + _CHUNK] = d.argmin(1)
    dist[i:i + _CHUNK] = d[np.arange(len(d)), labels[i:i + _CHUNK]]
  return labels, dist


def kmeans_pp(x, k: int, rng) -> np.ndarray:
  """k-means++ seeding (Arthur & Vassilvitskii 2007) of float64 rows `x`: each next centroid
  drawn with probability proportional to its squared distance to the nearest one chosen."""
  xx = (x * x).sum(1)

  def to(c):  # squared distances of every row to c
    return np.maximum(xx - 2.0 * (x @ c) + c @ c, 0.0)

  centroids = [x[rng.integers(len(x))]]
  closest = to(centroids[0])
  for _ in range(1, k):
    total = closest.sum()
    i = rng.choice(len(x), p=closest / total) if total > 0 else rng.integers(len(x))
    centroids.append(x[i])
    closest = np.minimum(closest, to(x[i]))
  return np.stack(centroids)


def kmeans(x, k: int, seed: int, iterations: int = ITERATIONS):
  """(centroids [k, D] float64, labels [n], inertia: [at the seeding, after each iteration])."""
  x = np.asarray(x, np.float64)
  if len(x) < k:
    raise UsageError(f"k-means: {len(x)} vectors for {k} centroids; fit on more jets "
                     "(task.codebook_jets) or use a smaller task.codebook_size")
  centroids = kmeans_pp(x, k, np.random.default_rng([seed, 2671]))
  labels, dist = assign(x, centroids)
  inertia = [float(dist.sum())]
  for _ in range(iterations):
    counts = np.bincount(labels, minlength=k)
    used = np.flatnonzero(counts)
    order = np.argsort(labels, kind="stable")  # each cluster's rows contiguous: one pass
    starts = np.concatenate([[0], np.cumsum(counts[used])[:-1]])
    centroids = centroids.copy()  # an empty cluster keeps its centroid
    centroids[used] = np.add.reduceat(x[order], starts, axis=0) / counts[used][:, None]
    new, dist = assign(x, centroids)
    inertia.append(float(dist.sum()))
    if np.array_equal(new, labels):
      break
    labels = new
  return centroids, labels, inertia


def fit(pipe, config):
  """(centroids [K, D] float32 with row 0 the empty patch, record for codebook.json)."""
  s = fit_settings(config)
  k, patch = s["codebook_size"], s["patch"]
  if k < 2:
    raise UsageError(f"task.codebook_size={k}: needs the empty code and at least one more")
  from mae_jax.data import meta as meta_lib
  channels = int(pipe.image_shape[-1])
  zero = meta_lib.normalize(np.zeros((channels,), np.float32), config.data.normalization,
                            pipe.meta.get("channel_stats"))
  empty = np.tile(np.asarray(zero, np.float32), patch * patch)
  vectors, n_empty, jets = [], 0, 0
  for images in pipe.sample_images(s["split"], s["codebook_jets"], s["seed"]):
    v = patchify_np(images, patch)
    occupied = is_occupied(v, empty)
    vectors.append(v[occupied].astype(np.float32))
    n_empty += int((~occupied).sum())
    jets += len(images)
  vectors = np.concatenate(vectors) if vectors else np.zeros((0, empty.size), np.float32)
  centroids, labels, inertia = kmeans(vectors, k - 1, s["seed"], ITERATIONS)
  counts = np.concatenate([[n_empty], np.bincount(labels, minlength=k - 1)])
  record = {**s, "jets": jets, "occupied_patches": len(vectors), "empty_patches": n_empty,
            "code_counts": counts.tolist(), "inertia": inertia,
            "iterations_run": len(inertia) - 1}
  return np.concatenate([empty[None], centroids]).astype(np.float32), record


def frequencies(counts) -> np.ndarray:
  """Code frequencies of the fit, add-one smoothed (every code gets a finite baseline)."""
  counts = np.asarray(counts, np.float64) + 1.0
  return counts / counts.sum()


def save(workdir, centroids, record):
  """codebook.npy and codebook.json, each written whole or not at all."""
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, f".{FILE}.tmp")
  with open(tmp, "wb") as f:
    np.save(f, centroids)
  os.replace(tmp, os.path.join(workdir, FILE))
  tmp = os.path.join(workdir, f".{RECORD}.tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, os.path.join(workdir, RECORD))


def load(workdir):
  """(centroids, record) saved in `workdir`, or None."""
  path, rec = os.path.join(workdir, FILE), os.path.join(workdir, RECORD)
  if not (os.path.exists(path) and os.path.exists(rec)):
    return None
  with open(rec) as f:
    return np.load(path), json.load(f)


class Targets:
  selection = "ce"  # the checkpoint with the lowest masked cross-entropy

  def __init__(self, patch: int, centroids, counts=None):
    """`centroids` [K, p*p*C] (row EMPTY = the empty patch); `counts` [K] of the fit (for
    the frequency baseline; default uniform)."""
    self.patch = patch
    self.centroids = np.asarray(centroids, np.float32)
    k = len(self.centroids)
    counts = np.zeros(k) if counts is None else np.asarray(counts)
    self.log_freq = np.log(frequencies(counts)).astype(np.float32)

  @classmethod
  def from_config(cls, config):
    raise UsageError("task.target='codes' fits its codebook on the training data: build the "
                     "task with the data (tasks.build(config, pipe, workdir))")

  @classmethod
  def from_data(cls, config, pipe, workdir=None):
    """The codebook saved in `workdir`, else fitted on `pipe` (and saved there)."""
    if config.model.get("norm_pix_loss", False):
      raise UsageError("model.norm_pix_loss is a pixel-target setting; task.target='codes' "
                       "fits its codebook to the pixels as they are")
    want = fit_settings(config)
    saved = load(workdir) if workdir else None
    if saved is not None:
      centroids, record = saved
      got = {key: record.get(key) for key in want}
      if got != want:
        raise UsageError(f"{os.path.join(workdir, FILE)} was fitted with {got}, this run "
                         f"asks {want}; use another workdir, or delete the codebook and the "
                         "checkpoints to start over")
      return cls(want["patch"], centroids, record["code_counts"])
    if pipe is None:
      raise UsageError("task.target='codes' fits its codebook on the training data: build the "
                       f"task with the data pipeline, or from a workdir that holds {FILE}")
    centroids, record = fit(pipe, config)
    if workdir and jax.process_index() == 0:  # every process fitted the same codebook
      save(workdir, centroids, record)
    return cls(want["patch"], centroids, record["code_counts"])

  def codes(self, vectors):
    """Patch vectors [..., D] -> codes [...] int32 (EMPTY, or 1 + the nearest centroid)."""
    x = vectors.astype(jnp.float32)
    c = jnp.asarray(self.centroids[1:])
    # argmin |x - c|^2 = argmin |c|^2 - 2 x.c (|x|^2 is the same for every code)
    score = jnp.sum(c * c, -1) - 2.0 * jnp.einsum("...d,kd->...k", x, c,
                                                  precision=jax.lax.Precision.HIGHEST)
    code = 1 + jnp.argmin(score, axis=-1).astype(jnp.int32)
    return jnp.where(is_occupied(x, jnp.asarray(self.centroids[EMPTY]), jnp), code, EMPTY)

  def __call__(self, images, slot_ids=None):
    """[B, H, W, C] -> codes [B, N] on the patch grid, or [B, S] at `slot_ids` (-1 =
    padding: EMPTY, never counted)."""
    patches = mae_lib.patchify(images, self.patch)
    if slot_ids is None:
      return self.codes(patches)
    # only the slots' patches are coded (sparse tokens: a fraction of the grid)
    patches = mae_lib.take_tokens(patches, jnp.maximum(slot_ids, 0))
    return jnp.where(slot_ids >= 0, self.codes(patches), EMPTY)

  def errors(self, pred, codes):
    """Per-slot cross-entropy [B, S] of the logits `pred` [B, S, K] (float32)."""
    logp = jax.nn.log_softmax(pred.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, codes[..., None], axis=-1)[..., 0]

  def baseline(self, codes):
    """The cross-entropy of predicting the fit's code frequencies."""
    return -jnp.asarray(self.log_freq)[codes]

  def eval_terms(self, pred, codes):
    return {"ce": self.errors(pred, codes), "ce_predict_frequencies": self.baseline(codes),
            "code_accuracy": (jnp.argmax(pred, axis=-1) == codes).astype(jnp.float32)}

  def decode_codes(self, codes):
    """Codes [...] -> their centroids [..., p*p*C] (normalised pixels)."""
    return jnp.asarray(self.centroids)[codes]

  def decode(self, pred):
    """Logits [..., K] -> the argmax code's centroid [..., p*p*C] (normalised pixels)."""
    return self.decode_codes(jnp.argmax(pred, axis=-1))
