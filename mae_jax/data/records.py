"""What every conversion engine computes the same way: the plan, dropped rows, statistics, sha256.

`mae_jax.data.convert` (one process) and `mae_jax.data.beam_convert` (Apache
Beam) both filter chunks with `filter_chunk` and reduce the kept records with
`SplitAccumulator`, so counts, per-channel statistics and checksums agree to
the bit whichever engine ran:

* Sums are taken per *row group*: the rows `[16 j, 16 j + 16)` of one input
  file's split (counted from the split's first row), kept rows only. Each
  group's float64 partials are a function of that group's images alone, and
  the split's totals fold them in (source, group) order, starting from zero.
  A Beam worker computes the partials of its row range; the driver folds them
  in the same order the single process does.
* The sha256 is sequential by definition (records in order); it is the only
  part that cannot be split.

No TensorFlow import (Beam workers and tests use it bare).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np

from mae_jax.data import meta as meta_lib
from mae_jax.data import schemas
from mae_jax.data.schemas import Layout
from mae_jax.errors import NonFiniteError, UsageError

GROUP_ROWS = 16  # source rows per statistics group
_STATS = ("image_sum", "target_sum", "sumsq", "lsum", "lsumsq")  # folded float64 sums


# Bad indices.


def parse_bad_indices(spec) -> dict[str, set[tuple[int | None, int]]]:
  """Parse a bad-index spec into `{split: {(source or None, index)}}`.

  `spec` is a dict or the path of a JSON file `{split: [index | [source,
  index], ...]}` or of a text file with one `split:index` (or
  `split:source:index`) per line (`#` comments allowed). `split` is
  the output split name, or `*` for any split; `index` is the source row
  index (the value stored in the `index` feature); without `source` the
  index applies to every input file.
  """
  if spec is None:
    return {}
  if isinstance(spec, (str, os.PathLike)):
    path = os.fspath(spec)
    if not os.path.exists(path):
      raise UsageError(f"bad-indices file not found: {path}")
    with open(path) as f:
      text = f.read()
    if text.lstrip().startswith("{"):
      try:
        spec = json.loads(text)
      except json.JSONDecodeError as e:
        raise UsageError(f"bad-indices file {path}: invalid JSON: {e}") from e
    else:
      out: dict[str, set] = {}
      for ln, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
          continue
        parts = [p.strip() for p in line.split(":")]
        try:
          if len(parts) == 2:
            item = (None, int(parts[1]))
          elif len(parts) == 3:
            item = (int(parts[1]), int(parts[2]))
          else:
            raise ValueError
        except ValueError:
          raise UsageError(f"bad-indices file {path} line {ln}: expected 'split:index' or "
                           f"'split:source:index', got {line!r}") from None
        out.setdefault(parts[0], set()).add(item)
      return out
  if not isinstance(spec, dict):
    raise ValueError(f"bad indices must be a dict or a file path, got {type(spec).__name__}")
  out = {}
  for split, items in spec.items():
    s = out.setdefault(str(split), set())
    for it in items:
      if isinstance(it, (list, tuple)):
        if len(it) != 2:
          raise UsageError(f"bad index entry {it!r} in split '{split}': "
                           "expected index or [source, index]")
        s.add((int(it[0]), int(it[1])))
      else:
        s.add((None, int(it)))
  return out


# Conversion plan.


@dataclasses.dataclass
class Plan:
  """What to convert and how; picklable, so Beam workers get it whole."""

  layouts: list[Layout]
  split_names: list[str]
  image_shape: tuple[int, int, int]
  channel_names: list[str]
  target_names: list[str]
  label_names: list[str] | None
  nan_policy: str
  bad: dict[str, set[tuple[int | None, int]]]
  chunk_size: int
  stats_split: str
  image_encoding: str = "zlib"  # or "sparse" (mae_jax.data.sparse_image)
  results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  channel_stats: dict[str, Any] | None = None
  bad_cache: dict[tuple[str, int], np.ndarray] = dataclasses.field(default_factory=dict)
  # (split, source) -> sorted source rows, for hold-outs drawn by `mae_jax.data.splits`;
  # absent: the split is the rows [start, stop) of its spec.
  rows: dict[tuple[str, int], np.ndarray] = dataclasses.field(default_factory=dict)

  def inputs_for(self, split: str) -> list[tuple[int, Layout]]:
    return [(i, lay) for i, lay in enumerate(self.layouts) if split in lay.splits]

  def num_input(self, split: str) -> int:
    return sum(int(self.rows[(split, i)].size) if (split, i) in self.rows
               else lay.splits[split].num_rows for i, lay in self.inputs_for(split))


def bad_mask(plan: Plan, split: str, source: int, index: np.ndarray) -> np.ndarray:
  wanted = plan.bad_cache.get((split, source))
  if wanted is None:
    entries = plan.bad.get(split, set()) | plan.bad.get("*", set())
    wanted = np.array(sorted({i for s, i in entries if s is None or s == source}), np.int64)
    plan.bad_cache[(split, source)] = wanted
  if wanted.size == 0:
    return np.zeros(index.shape, bool)
  return np.isin(index, wanted)


def nonfinite_rows(chunk: schemas.Chunk) -> tuple[np.ndarray, np.ndarray]:
  """Boolean masks [B] of rows with non-finite images / targets."""
  b = chunk.images.shape[0]
  img_bad = np.zeros(b, bool)
  for a in range(0, b, GROUP_ROWS):  # blocks: no whole-chunk boolean temporary
    blk = chunk.images[a:a + GROUP_ROWS]
    img_bad[a:a + GROUP_ROWS] = ~np.isfinite(blk.reshape(blk.shape[0], -1)).all(axis=1)
  tgt_bad = ~np.isfinite(chunk.targets).all(axis=1) if chunk.targets.shape[1] else np.zeros(b, bool)
  return img_bad, tgt_bad


@dataclasses.dataclass
class Kept:
  """The kept rows of one chunk, and what was dropped from it and why."""

  images: np.ndarray
  labels: np.ndarray
  targets: np.ndarray
  index: np.ndarray  # source row indices of the kept rows
  dropped: np.ndarray  # source row indices of the dropped rows
  nonfinite_images: np.ndarray  # source row indices, not listed as bad
  nonfinite_targets: np.ndarray
  num_bad_indices: int


def filter_chunk(plan: Plan, split: str, source: int, chunk: schemas.Chunk) -> Kept:
  """Drops the listed bad rows and (both policies; `reject` raises later) non-finite rows."""
  b = chunk.images.shape[0]
  idx = getattr(chunk, "index", None)  # a hold-out split's chunk lists its rows
  if idx is None:
    idx = chunk.start + np.arange(b, dtype=np.int64)
  known_bad = bad_mask(plan, split, source, idx)
  img_bad, tgt_bad = nonfinite_rows(chunk)
  drop = known_bad | ((img_bad | tgt_bad) & ~known_bad)
  nf_img, nf_tgt = idx[img_bad & ~known_bad], idx[tgt_bad & ~known_bad]
  if drop.any():
    keep = np.flatnonzero(~drop)
    return Kept(chunk.images[keep], chunk.labels[keep], chunk.targets[keep], idx[keep], idx[drop],
                nf_img, nf_tgt, int(known_bad.sum()))
  return Kept(chunk.images, chunk.labels, chunk.targets, idx, idx[:0], nf_img, nf_tgt, 0)


def nonfinite_error(layout: Layout, split: str, found: dict[str, list[int]]) -> NonFiniteError:
  """The error for `nan_policy='reject'`: file, key, split, count and first indices."""
  spec = layout.splits[split]
  keys = {"images": f"'{spec.image_key}'",
          "targets": ", ".join(f"'{k}'" if c is None else f"'{k}[:,{c}]'"
                               for k, c in spec.target_keys)}
  name = os.path.basename(layout.path)
  parts = [f"{name} key {keys[what]} (split '{split}'): {len(rows)} {what} with NaN/Inf "
           f"at indices {rows[:10]}{' ...' if len(rows) > 10 else ''}"
           for what, rows in found.items() if rows]
  return NonFiniteError(
      "; ".join(parts) + f" (file: {layout.path}). Use nan_policy='drop' (--nan-policy drop) to "
      "drop them, or list them with --bad-indices.")


# Statistics.


def update_sha(sha, images: np.ndarray, labels: np.ndarray, targets: np.ndarray) -> None:
  """Adds records to `sha`: image float32 LE C-order bytes, label int64 LE, targets float32 LE."""
  le_img = images.astype("<f4", copy=False)
  le_lab = labels.astype("<i8", copy=False)
  le_tgt = targets.astype("<f4", copy=False)
  k = targets.shape[1] if targets.ndim == 2 else 0
  for i in range(images.shape[0]):
    sha.update(le_img[i].tobytes())
    sha.update(le_lab[i].tobytes())
    if k:
      sha.update(le_tgt[i].tobytes())


def group_partials(images: np.ndarray, targets: np.ndarray, stats: bool) -> dict[str, np.ndarray]:
  """Float64 partial sums of one row group's kept images [g,H,W,C] and targets [g,K]."""
  blk = images.reshape(-1, images.shape[-1])
  p = {"image_sum": np.sum(blk, axis=0, dtype=np.float64),
       "target_sum": np.sum(targets, axis=0, dtype=np.float64)}
  if stats:
    b64 = blk.astype(np.float64)
    lg = meta_lib.normalize(b64, "log1p")
    p.update(sumsq=np.einsum("ij,ij->j", b64, b64), lsum=lg.sum(axis=0),
             lsumsq=np.einsum("ij,ij->j", lg, lg), max=b64.max(axis=0),
             nonzero=np.count_nonzero(blk, axis=0).astype(np.int64),
             pixels=np.int64(blk.shape[0]))
  return p


class SplitAccumulator:
  """Counts, label counts, sums, statistics and (optionally) the sha256 of a split.

  `update` takes kept records in order with their source rows; rows of one
  statistics group may arrive in several calls (the group is finished when a
  later group starts, at `next_source` or at `finish`). With `keep_groups`
  the group partials are kept in a list (a Beam worker's output) instead of
  being folded.
  """

  def __init__(self, num_channels: int, num_targets: int, channel_stats: bool,
               sha: bool = True, keep_groups: bool = False):
    self.c, self.k, self.do_stats = num_channels, num_targets, channel_stats
    self.n = 0
    self.label_counts: dict[int, int] = {}
    self.sha = hashlib.sha256() if sha else None
    self.sums = {name: np.zeros(num_targets if name == "target_sum" else num_channels)
                 for name in _STATS}
    self.max = np.full(num_channels, -np.inf, np.float64)
    self.nonzero = np.zeros(num_channels, np.int64)
    self.pixels = 0
    self.groups: list[dict[str, np.ndarray]] | None = [] if keep_groups else None
    self._pending: list[tuple[np.ndarray, np.ndarray]] = []
    self._pending_group = None
    self._auto_row = 0

  def update(self, images: np.ndarray, labels: np.ndarray, targets: np.ndarray,
             rows: np.ndarray | None = None) -> None:
    """`images` float32 [B,H,W,C], `labels` int64 [B], `targets` float32 [B,K] in record
    order; `rows` the source rows counted from the split's first row (default: running)."""
    b = images.shape[0]
    if b == 0:
      return
    if rows is None:
      rows = self._auto_row + np.arange(b)
    self._auto_row = int(rows[-1]) + 1
    self.n += b
    vals, counts = np.unique(labels, return_counts=True)
    for v, c in zip(vals.tolist(), counts.tolist()):
      self.label_counts[int(v)] = self.label_counts.get(int(v), 0) + int(c)
    if self.sha is not None:
      update_sha(self.sha, images, labels, targets)
    gid = np.asarray(rows) // GROUP_ROWS
    cuts = np.flatnonzero(np.diff(gid)) + 1
    for a, z in zip(np.r_[0, cuts], np.r_[cuts, b]):
      g = int(gid[a])
      if g != self._pending_group:
        self._finish_group()
        self._pending_group = g
      self._pending.append((images[a:z], targets[a:z]))
    # The last group may go on in the next call: keep its own copy, not a view of the chunk.
    self._pending = [(x.copy(), t.copy()) for x, t in self._pending]

  def next_source(self) -> None:
    """Groups never span two input files."""
    self._finish_group()
    self._pending_group = None
    self._auto_row = 0

  def finish(self) -> None:
    self.next_source()

  def _finish_group(self) -> None:
    if not self._pending:
      return
    if len(self._pending) == 1:
      images, targets = self._pending[0]
    else:
      images = np.concatenate([x for x, _ in self._pending])
      targets = np.concatenate([t for _, t in self._pending])
    self._pending = []
    p = group_partials(images, targets, self.do_stats)
    if self.groups is not None:
      self.groups.append(p)
    else:
      self.fold(p)

  def fold(self, p: dict[str, np.ndarray]) -> None:
    """Adds one group's partials; callers fold groups in (source, group) order."""
    for name in _STATS:
      if name in p:
        self.sums[name] += p[name]
    if "max" in p:
      self.max = np.maximum(self.max, p["max"])
      self.nonzero += p["nonzero"]
      self.pixels += int(p["pixels"])

  def add_counts(self, n: int, label_counts: dict[int, int]) -> None:
    self.n += n
    for v, c in label_counts.items():
      self.label_counts[int(v)] = self.label_counts.get(int(v), 0) + int(c)

  def split_meta(self) -> dict[str, Any]:
    self.finish()
    return {
        "num_examples": int(self.n),
        "label_counts": {str(k): v for k, v in sorted(self.label_counts.items())},
        "image_sum": self.sums["image_sum"].tolist(),
        "target_sum": self.sums["target_sum"].tolist(),
        "sha256": self.sha.hexdigest() if self.sha is not None else None,
    }

  def channel_stats(self) -> dict[str, list[float]]:
    self.finish()
    n = max(self.pixels, 1)
    mean = self.sums["image_sum"] / n
    var = np.maximum(self.sums["sumsq"] / n - mean**2, 0.0)
    lmean = self.sums["lsum"] / n
    lvar = np.maximum(self.sums["lsumsq"] / n - lmean**2, 0.0)
    mx = np.where(np.isfinite(self.max), self.max, 0.0)
    return {
        "mean": mean.tolist(),
        "std": np.sqrt(var).tolist(),
        "max": mx.tolist(),
        "nonzero_frac": (self.nonzero / n).tolist(),
        "log1p_mean": lmean.tolist(),
        "log1p_std": np.sqrt(lvar).tolist(),
        "num_pixels": int(self.pixels),
    }
