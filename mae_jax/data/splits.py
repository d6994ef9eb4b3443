"""Hold-out splits of single-split files: a seeded permutation, stratified by label.

Split out of `mae_jax.data.convert`. `--holdout V,T` on a file without
train/validation/test splits draws, per input file and per label value (one
stratum when unlabelled), a permutation of that class's rows from
`numpy.random.default_rng([seed, source])`; the first `round(V n_c)` go to
`validation`, the next `round(T n_c)` to `test`, the rest to `train`. So a
file sorted by class (signal file + background file concatenated) gets every
class in every split, each split's class counts are within one jet of the
fractions, and the same seed gives the same split.

A split of one file is then a sorted array of source rows (`Plan.rows`);
records keep source-row order inside their split. Reading stays chunked:
`split_chunks` reads the file span that holds the split's rows, `chunk_size`
rows at a time, and keeps the split's rows of each chunk, so memory does not
grow with the file (the labels and the row arrays, 8 bytes a row, are the only
per-row state). Each split reads the span it covers, so with hold-outs a file
is read about once per split.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterator

import numpy as np

from mae_jax.data import schemas
from mae_jax.data.layouts import _label_column, check_label_values
from mae_jax.errors import DataFormatError

log = logging.getLogger(__name__)

DEFAULT_HOLDOUT = (0.1, 0.1)
SPLIT_FORMATS = ("e2e_split", "ml4sci_split")
METHOD = ("per input file and label value, a permutation of its rows from "
          "numpy.random.default_rng([split_seed, source]): the first round(V*n) rows go to "
          "validation, the next round(T*n) to test, the rest to train; records keep source-row "
          "order within a split")


def default_holdout(holdout, inputs, format="auto"):
  """The CLI's --holdout: 'auto' -> DEFAULT_HOLDOUT for single-split formats (with a line
  saying so), None for files that have splits; '0' -> None (everything in train)."""
  if isinstance(holdout, str) and holdout.strip() in ("0", "0,0", "none"):
    return None
  if holdout != "auto":
    return holdout
  fmt = format if format != "auto" else schemas.detect_format(inputs[0])
  if fmt in SPLIT_FORMATS:
    return None
  log.warning("%s has no train/validation/test splits: holding out %g / %g of its rows "
              "(a seeded permutation, stratified by label) as validation / test (recorded in "
              "the metadata; --holdout 0 keeps every row in train)", inputs[0], *DEFAULT_HOLDOUT)
  return DEFAULT_HOLDOUT


# Assigning rows.


def read_labels(layout: schemas.Layout, spec: schemas.SplitSpec) -> np.ndarray:
  """The labels of rows [spec.start, spec.stop) (-1 when unlabelled), read without images."""
  n = spec.num_rows
  if spec.label_key is None:
    return np.full(n, -1, np.int64)
  if layout.format == "parquet":
    import pyarrow.parquet as pq

    from mae_jax.data.schemas_parquet import _column_to_numpy

    col = pq.ParquetFile(layout.path).read(columns=[spec.label_key]).column(0)
    y = _column_to_numpy(col, layout.path, spec.label_key)[spec.start:spec.stop]
    return check_label_values(layout.path, spec.label_key, y, spec.start)
  import h5py

  out = np.empty(n, np.int64)
  with h5py.File(layout.path, "r") as f:
    ds = f[spec.label_key]
    for a in range(spec.start, spec.stop, 1 << 20):
      b = min(spec.stop, a + (1 << 20))
      raw = _label_column(ds[a:b], spec.label_column)
      out[a - spec.start:b - spec.start] = check_label_values(layout.path, spec.label_key, raw, a)
  return out


def _round(x: float) -> int:
  return int(np.floor(x + 0.5))  # half up, not to even: the counts the docs state


def assign(labels: np.ndarray, holdout: tuple[float, float], seed: int,
           source: int) -> dict[str, np.ndarray]:
  """Sorted row positions (0-based in `labels`) of train / validation / test."""
  rng = np.random.default_rng([int(seed), int(source)])
  parts = {"train": [], "validation": [], "test": []}
  for value in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == value))
    n_val, n_test = _round(holdout[0] * rows.size), _round(holdout[1] * rows.size)
    parts["validation"].append(rows[:n_val])
    parts["test"].append(rows[n_val:n_val + n_test])
    parts["train"].append(rows[n_val + n_test:])
  return {s: np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for s, p in parts.items()}


def apply_holdout(layouts: list, holdout, seed: int) -> dict[tuple[str, int], np.ndarray]:
  """Replaces the by-index hold-out ranges of single-split `layouts` by a stratified seeded
  permutation: every split's spec spans the whole array; returns `{(split, source): rows}`
  (sorted source rows) for `Plan.rows`. Checks every split's class balance first."""
  rows_by = {}
  for source, lay in enumerate(layouts):
    if "train" not in lay.splits or set(lay.splits) - set(schemas.SPLITS):
      continue
    specs = sorted(lay.splits.values(), key=lambda s: s.start)
    whole = dataclasses.replace(specs[0], start=0, stop=max(s.stop for s in specs))
    labels = read_labels(lay, whole)
    parts = assign(labels, holdout, seed, source)
    lay.splits = {s: dataclasses.replace(whole) for s in schemas.SPLITS if parts[s].size}
    for s in lay.splits:
      rows_by[(s, source)] = parts[s].astype(np.int64)
    check_balance({s: _counts(labels[parts[s]]) for s in lay.splits}, lay.path)
  return rows_by


def _counts(labels: np.ndarray) -> dict[str, int]:
  vals, counts = np.unique(labels, return_counts=True)
  return {str(v): int(c) for v, c in zip(vals.tolist(), counts.tolist())}


def check_balance(split_counts: dict[str, dict[str, int]], where: str) -> None:
  """A one-line DataFormatError if the data hold two classes and a split holds only one (its
  AUC is undefined; the protocol would train for minutes and then fail)."""
  def classes(c):
    return {k for k, v in c.items() if k != "-1" and v}

  if len(set().union(*map(classes, split_counts.values()))) < 2:
    return  # unlabelled or one class overall: nothing to balance
  for split, counts in split_counts.items():
    if len(classes(counts)) < 2:
      raise DataFormatError(
          f"{where}: split '{split}' holds one class only (label counts {counts}); its AUC is "
          "undefined. Give larger hold-out fractions (--holdout) or a file with more jets of "
          "each class")


# Reading rows.


@dataclasses.dataclass
class RowsChunk(schemas.Chunk):
  """A chunk of non-consecutive rows: `index` holds their source rows."""

  index: np.ndarray | None = None


def num_rows(plan, split: str, source: int) -> int:
  rows = plan.rows.get((split, source))
  return plan.layouts[source].splits[split].num_rows if rows is None else int(rows.size)


def chunk_index(chunk: schemas.Chunk) -> np.ndarray:
  """Source rows of a chunk's rows."""
  idx = getattr(chunk, "index", None)
  return idx if idx is not None else chunk.start + np.arange(chunk.images.shape[0], dtype=np.int64)


def positions(plan, split: str, source: int, index: np.ndarray) -> np.ndarray:
  """Positions in the split (0 = its first row) of source rows `index`."""
  rows = plan.rows.get((split, source))
  if rows is None:
    return np.asarray(index) - plan.layouts[source].splits[split].start
  return np.searchsorted(rows, index)


def split_chunks(plan, split: str, source: int, lo: int = 0,
                 hi: int | None = None) -> Iterator[schemas.Chunk]:
  """Chunks of the split's rows at positions [lo, hi) of one input file, in source order."""
  layout = plan.layouts[source]
  spec = layout.splits[split]
  rows = plan.rows.get((split, source))
  if rows is None:
    stop = spec.stop if hi is None else spec.start + hi
    yield from schemas.iter_chunks(layout, split, plan.chunk_size, start=spec.start + lo, stop=stop)
    return
  sel = rows[lo:hi]
  if not sel.size:
    return
  for ch in schemas.iter_chunks(layout, split, plan.chunk_size, start=int(sel[0]),
                                stop=int(sel[-1]) + 1):
    a, z = np.searchsorted(sel, [ch.start, ch.start + ch.images.shape[0]])
    if a < z:
      take = sel[a:z] - ch.start
      yield RowsChunk(int(sel[a]), ch.images[take], ch.labels[take], ch.targets[take],
                      ch.target_keys, index=sel[a:z])
