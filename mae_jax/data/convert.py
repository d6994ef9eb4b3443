r"""Convert public E2E jet-image files (HDF5 / parquet) into a TFDS dataset.

  python -m mae_jax.data.convert --input FILE [FILE ...] --output DIR \
      [--format auto] [--nan-policy reject|drop] [--bad-indices SPEC] \
      [--holdout V,T] [--chunk-size 256] [--writer-buffer-mb 256] [--overwrite] [--verify]
  python -m mae_jax.data.convert verify DIR

Output contract (read by `mae_jax.data.pipeline`): `DIR` is a TFDS builder
directory (TFRecord shards + `dataset_info.json` + `features.json`) readable
with `tfds.builder_from_directory(DIR)`; records are kept in input order
(`disable_shuffling=True`). Features per record:
  image    float32 `(H, W, C)` channels-last, zlib-encoded tensor
  label    int64 scalar (-1 when unlabelled)
  targets  float32 `(K,)` regression targets (only present when K > 0)
  index    int64 row index in the source file's array (for single-split formats
           with `--holdout` this is the row in the whole array)
  source   int64 index into the list of input files

`DIR/mae_jax_meta.json` holds provenance, per-split counts / checksums and
per-channel statistics of the train split; see `docs/data.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import glob
import hashlib
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Any, Iterable, Sequence
from unittest import mock

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from mae_jax import errors, workdir_lock
from mae_jax.data import meta as meta_lib
from mae_jax.data import pipeline, schemas
from mae_jax.data.schemas import Layout
from mae_jax.errors import USER_ERRORS, DataFormatError, NonFiniteError, VerificationError

log = logging.getLogger(__name__)

BUILDER_NAME = "mae_jax_converted"
BUILDER_VERSION = "1.0.0"
_STATS_BLOCK = 16  # images per block when accumulating float64 statistics
_HKEY_SPACE = 1 << 128  # TFDS shuffler key space (keys spread over it keep buckets balanced)


def _version() -> str:
  try:
    import mae_jax

    v = getattr(mae_jax, "__version__", None)
    if v:
      return str(v)
  except Exception:  # pragma: no cover
    pass
  try:
    from importlib.metadata import version

    return version("mae_jax")
  except Exception:  # pragma: no cover
    return "unknown"


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
      raise ValueError(f"bad-indices file not found: {path}")
    with open(path) as f:
      text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("{"):
      try:
        spec = json.loads(text)
      except json.JSONDecodeError as e:
        raise ValueError(f"bad-indices file {path}: invalid JSON: {e}") from e
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
          raise ValueError(f"bad-indices file {path} line {ln}: expected 'split:index' or "
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
          raise ValueError(f"bad index entry {it!r} for split {split!r}: "
                           "expected index or [source, index]")
        s.add((int(it[0]), int(it[1])))
      else:
        s.add((None, int(it)))
  return out


# Streaming statistics.


class _SplitAccumulator:
  """Counts, sums, sha256 and (optionally) per-channel statistics of a split."""

  def __init__(self, num_channels: int, num_targets: int, channel_stats: bool):
    self.c = num_channels
    self.k = num_targets
    self.n = 0
    self.label_counts: dict[int, int] = {}
    self.image_sum = np.zeros(num_channels, np.float64)
    self.target_sum = np.zeros(num_targets, np.float64)
    self.sha = hashlib.sha256()
    self.do_stats = channel_stats
    self.pixels = 0
    self.sumsq = np.zeros(num_channels, np.float64)
    self.max = np.full(num_channels, -np.inf, np.float64)
    self.nonzero = np.zeros(num_channels, np.int64)
    self.lsum = np.zeros(num_channels, np.float64)
    self.lsumsq = np.zeros(num_channels, np.float64)

  def update(self, images: np.ndarray, labels: np.ndarray, targets: np.ndarray) -> None:
    """`images` float32 [B,H,W,C], `labels` int64 [B], `targets` float32 [B,K] (record order)."""
    b = images.shape[0]
    if b == 0:
      return
    self.n += b
    vals, counts = np.unique(labels, return_counts=True)
    for v, c in zip(vals.tolist(), counts.tolist()):
      self.label_counts[int(v)] = self.label_counts.get(int(v), 0) + int(c)
    if self.k:
      self.target_sum += np.sum(targets, axis=0, dtype=np.float64)
    le_img = images.astype("<f4", copy=False)
    le_lab = labels.astype("<i8", copy=False)
    le_tgt = targets.astype("<f4", copy=False)
    for i in range(b):
      self.sha.update(le_img[i].tobytes())
      self.sha.update(le_lab[i].tobytes())
      if self.k:
        self.sha.update(le_tgt[i].tobytes())
    for a in range(0, b, _STATS_BLOCK):
      blk = images[a:a + _STATS_BLOCK].reshape(-1, self.c)
      self.image_sum += np.sum(blk, axis=0, dtype=np.float64)
      if self.do_stats:
        self.pixels += blk.shape[0]
        b64 = blk.astype(np.float64)
        self.sumsq += np.einsum("ij,ij->j", b64, b64)
        self.max = np.maximum(self.max, b64.max(axis=0))
        self.nonzero += np.count_nonzero(blk, axis=0)
        lg = meta_lib.normalize(b64, "log1p")
        self.lsum += lg.sum(axis=0)
        self.lsumsq += np.einsum("ij,ij->j", lg, lg)

  def split_meta(self) -> dict[str, Any]:
    return {
        "num_examples": int(self.n),
        "label_counts": {str(k): v for k, v in sorted(self.label_counts.items())},
        "image_sum": self.image_sum.tolist(),
        "target_sum": self.target_sum.tolist(),
        "sha256": self.sha.hexdigest(),
    }

  def channel_stats(self) -> dict[str, list[float]]:
    n = max(self.pixels, 1)
    mean = self.image_sum / n
    var = np.maximum(self.sumsq / n - mean**2, 0.0)
    lmean = self.lsum / n
    lvar = np.maximum(self.lsumsq / n - lmean**2, 0.0)
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


# Conversion plan and TFDS builder.


@dataclasses.dataclass
class _Plan:
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
  results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  channel_stats: dict[str, Any] | None = None
  bad_cache: dict[tuple[str, int], np.ndarray] = dataclasses.field(default_factory=dict)

  def inputs_for(self, split: str) -> list[tuple[int, Layout]]:
    return [(i, lay) for i, lay in enumerate(self.layouts) if split in lay.splits]

  def num_input(self, split: str) -> int:
    return sum(lay.splits[split].num_rows for _, lay in self.inputs_for(split))


def _bad_mask(plan: _Plan, split: str, source: int, index: np.ndarray) -> np.ndarray:
  wanted = plan.bad_cache.get((split, source))
  if wanted is None:
    entries = plan.bad.get(split, set()) | plan.bad.get("*", set())
    wanted = np.array(sorted({i for s, i in entries if s is None or s == source}), np.int64)
    plan.bad_cache[(split, source)] = wanted
  if wanted.size == 0:
    return np.zeros(index.shape, bool)
  return np.isin(index, wanted)


def _nonfinite_rows(chunk: schemas.Chunk) -> tuple[np.ndarray, np.ndarray]:
  """Boolean masks [B] of rows with non-finite images / targets."""
  b = chunk.images.shape[0]
  img_bad = np.zeros(b, bool)
  for a in range(0, b, _STATS_BLOCK):
    blk = chunk.images[a:a + _STATS_BLOCK]
    img_bad[a:a + _STATS_BLOCK] = ~np.isfinite(blk.reshape(blk.shape[0], -1)).all(axis=1)
  tgt_bad = ~np.isfinite(chunk.targets).all(axis=1) if chunk.targets.shape[1] else np.zeros(b, bool)
  return img_bad, tgt_bad


def _raise_nonfinite(plan: _Plan, split: str, layout: Layout, source: int,
                     first_chunk: schemas.Chunk) -> None:
  """Lists the non-finite rows of this file's split from `first_chunk` on, then raises."""
  spec = layout.splits[split]
  bad = {"images": [], "targets": []}
  nxt = first_chunk.start + first_chunk.images.shape[0]
  rest = schemas.iter_chunks(layout, split, plan.chunk_size, start=nxt) if nxt < spec.stop else ()
  for ch in itertools.chain([first_chunk], rest):
    idx = ch.start + np.arange(ch.images.shape[0])
    known_bad = _bad_mask(plan, split, source, idx)
    for what, rows in zip(bad, _nonfinite_rows(ch)):
      bad[what] += idx[rows & ~known_bad].tolist()
  keys = {"images": f"'{spec.image_key}'",
          "targets": ", ".join(f"'{k}'" for k in first_chunk.target_keys)}
  name = os.path.basename(layout.path)
  parts = [f"{name} key {keys[what]} (split '{split}'): {len(found)} {what} with NaN/Inf "
           f"at indices {found[:10]}{' ...' if len(found) > 10 else ''}"
           for what, found in bad.items() if found]
  raise NonFiniteError(
      "; ".join(parts) + f" (file: {layout.path}). Use nan_policy='drop' (--nan-policy drop) to "
      "drop them, or list them with --bad-indices."
  )


def _generate_split(plan: _Plan, split: str) -> Iterable[tuple[int, dict[str, Any]]]:
  c = plan.image_shape[2]
  k = len(plan.target_names)
  acc = _SplitAccumulator(c, k, channel_stats=(split == plan.stats_split))
  dropped: list[list[int]] = []
  n_nonfinite = 0
  n_badidx = 0
  total = plan.num_input(split)
  stride = _HKEY_SPACE // max(total, 1)
  key = 0
  for source, layout in plan.inputs_for(split):
    for chunk in schemas.iter_chunks(layout, split, plan.chunk_size):
      b = chunk.images.shape[0]
      idx = chunk.start + np.arange(b, dtype=np.int64)
      known_bad = _bad_mask(plan, split, source, idx)
      img_bad, tgt_bad = _nonfinite_rows(chunk)
      nonfinite = (img_bad | tgt_bad) & ~known_bad
      if nonfinite.any() and plan.nan_policy == "reject":
        _raise_nonfinite(plan, split, layout, source, chunk)
      drop = known_bad | nonfinite
      n_nonfinite += int(nonfinite.sum())
      n_badidx += int(known_bad.sum())
      if drop.any():
        keep_rows = np.flatnonzero(~drop)
        dropped += [[source, int(i)] for i in idx[drop]]
        images, labels, targets, idx_k = (chunk.images[keep_rows], chunk.labels[keep_rows],
                                          chunk.targets[keep_rows], idx[keep_rows])
      else:
        images, labels, targets, idx_k = chunk.images, chunk.labels, chunk.targets, idx
      acc.update(images, labels, targets)
      for i in range(images.shape[0]):
        rec = {
            "image": images[i],
            "label": np.int64(labels[i]),
            "index": np.int64(idx_k[i]),
            "source": np.int64(source),
        }
        if k:
          rec["targets"] = targets[i]
        yield key, rec
        key += stride
  if acc.n == 0:
    raise DataFormatError(f"split '{split}': no examples left after dropping {len(dropped)} rows")
  meta = acc.split_meta()
  meta.update(
      num_input=int(total),
      num_dropped=len(dropped),
      num_dropped_nonfinite=n_nonfinite,
      num_dropped_bad_indices=n_badidx,
      dropped_indices=dropped,
  )
  plan.results[split] = meta
  if acc.do_stats:
    plan.channel_stats = acc.channel_stats()


def _features(plan: _Plan) -> tfds.features.FeaturesDict:
  feats = {
      "image": tfds.features.Tensor(
          shape=tuple(plan.image_shape), dtype=np.float32, encoding=tfds.features.Encoding.ZLIB
      ),
      "label": tfds.features.Scalar(dtype=np.int64),
      "index": tfds.features.Scalar(dtype=np.int64),
      "source": tfds.features.Scalar(dtype=np.int64),
  }
  if plan.target_names:
    feats["targets"] = tfds.features.Tensor(shape=(len(plan.target_names),), dtype=np.float32)
  return tfds.features.FeaturesDict(feats)


class _LocalDatasetInfo(tfds.core.DatasetInfo):
  """The info of a dataset that exists only here: nothing to fetch from the TFDS GCS bucket.

  A builder without a prepared directory calls `info.initialize_from_bucket()`, which
  probes gs://tfds-data and `tempfile.mkdtemp()`s a directory in the system temp dir that
  it never removes, one per conversion. Overriding that one method on our own info
  object avoids both without touching global state (such as `tempfile.tempdir`).
  """

  def initialize_from_bucket(self) -> None:
    pass


class MaeJaxConverted(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """TFDS builder wrapping a conversion plan (not registered in the TFDS catalog)."""

  name = BUILDER_NAME
  VERSION = tfds.core.Version(BUILDER_VERSION)
  RELEASE_NOTES = {BUILDER_VERSION: "mae_jax conversion of public E2E jet images."}

  # TFDS derives the builder's source path from the top-level package via
  # importlib.resources, which fails for some editable installs; give it directly.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    from etils import epath

    return epath.Path(os.path.abspath(__file__))

  def __init__(self, *, plan: _Plan, **kwargs):
    self._plan = plan
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    p = self._plan
    return _LocalDatasetInfo(
        builder=self,
        description=(
            f"CMS E2E jet images converted by mae_jax from format '{p.layouts[0].format}': "
            f"image {list(p.image_shape)} channels {p.channel_names}, targets {p.target_names}."
        ),
        features=_features(p),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    return {s: self._generate_examples(s) for s in self._plan.split_names}

  def _generate_examples(self, split):
    yield from _generate_split(self._plan, split)


def _writer_buffer(limit_bytes: int | None):
  """Caps TFDS's in-memory shuffle buffer (default 1 GB) inside the `with` block.

  TFDS 4.9 has no per-writer option: every Shuffler reads the module constant
  `shuffle.MAX_MEM_BUFFER_SIZE`, so that one TFDS constant is patched for the block.
  """
  if limit_bytes is None:
    return contextlib.nullcontext()
  return mock.patch.object(tfds_shuffle, "MAX_MEM_BUFFER_SIZE", int(limit_bytes))


# Public API.


def _plan_for(inputs, format, nan_policy, bad_indices, holdout, chunk_size) -> _Plan:
  if isinstance(inputs, (str, os.PathLike)):
    inputs = [inputs]
  inputs = [os.path.abspath(os.fspath(p)) for p in inputs]
  if not inputs:
    raise ValueError("no input files given")
  if nan_policy not in ("reject", "drop"):
    raise ValueError(f"nan_policy must be 'reject' or 'drop', got {nan_policy!r}")
  if int(chunk_size) < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  layouts = [schemas.inspect_file(p, format=format, holdout=holdout) for p in inputs]
  schemas.check_compatible(layouts)
  present = [s for s in schemas.SPLITS if any(s in lay.splits for lay in layouts)]
  bad = parse_bad_indices(bad_indices)
  unknown = sorted(set(bad) - set(present) - {"*"})
  if unknown:
    raise ValueError(f"bad indices name split(s) {unknown} not in the converted splits {present}")
  label_names = next((lay.label_names for lay in layouts if lay.label_names), None)
  return _Plan(
      layouts=layouts,
      split_names=present,
      image_shape=tuple(layouts[0].image_shape),
      channel_names=list(layouts[0].channel_names),
      target_names=list(layouts[0].target_names),
      label_names=label_names,
      nan_policy=nan_policy,
      bad=bad,
      chunk_size=int(chunk_size),
      stats_split="train" if "train" in present else present[0],
  )


_CREATOR = "creator.json"  # in OUTPUT.partial-*: the conversion writing it (host, pid)


def _remove_stale_partials(output: str) -> None:
  """Removes the OUTPUT.partial-* directories of conversions that died (SIGKILL, node failure),
  one warning line each; a directory that a live conversion, or one on another host, may be
  writing is left alone (with a line saying so)."""
  for d in sorted(glob.glob(glob.escape(output) + ".partial-*")):
    try:
      with open(os.path.join(d, _CREATOR)) as f:
        creator = json.load(f)
    except (OSError, ValueError):
      creator = None
    reason = workdir_lock.dead_reason(creator) if creator else None
    if reason:
      shutil.rmtree(d, ignore_errors=True)
      log.warning("removed %s, left by an interrupted conversion (%s): %s", d,
                  workdir_lock.describe(creator), reason)
    else:
      log.warning("leaving %s: %s; remove it by hand if no conversion is writing it", d,
                  f"a conversion may still be writing it ({workdir_lock.describe(creator)})"
                  if creator else "it has no record of the conversion that made it")


def convert(
    inputs: Sequence[str] | str,
    output: str,
    format: str = "auto",
    nan_policy: str = "reject",
    bad_indices=None,
    holdout=None,
    chunk_size: int = 256,
    overwrite: bool = False,
    writer_buffer_mb: int | None = 256,
) -> dict:
  """Convert `inputs` into a TFDS dataset at `output`; return the metadata.

  The dataset is built under a temporary sibling `OUTPUT.partial-XXXX` and
  moved into place with one `os.rename` at the very end, so `output`
  never exists in an incomplete state. The partial directory records its
  creator (host, pid), so that a rerun removes those of dead conversions
  (SIGKILL) with a warning. A full disk, quota or read-only filesystem is a
  one-line `DiskFullError`. `writer_buffer_mb` caps the TFDS
  writer's in-memory record buffer (records spill to temporary bucket files
  beyond it); `None` keeps TFDS's 1 GB default.
  """
  pipeline.hide_accelerators_from_tf()
  output = os.path.abspath(os.fspath(output))
  _remove_stale_partials(output)
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(
        f"output {output} already exists (use --overwrite / overwrite=True to replace it)")
  plan = _plan_for(inputs, format, nan_policy, bad_indices, holdout, chunk_size)
  parent = os.path.dirname(output)
  try:
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=os.path.basename(output) + ".partial-", dir=parent)
  except OSError as e:
    _raise_if_disk_full(e, output)
    raise
  try:
    with open(os.path.join(partial, _CREATOR), "w") as f:
      json.dump(workdir_lock.identity(), f)
    builder = MaeJaxConverted(plan=plan, data_dir=partial, file_format="tfrecord")
    dl_config = tfds.download.DownloadConfig(try_download_gcs=False)
    with _writer_buffer(None if writer_buffer_mb is None else int(writer_buffer_mb) << 20):
      builder.download_and_prepare(download_dir=os.path.join(partial, "downloads"),
                                   download_config=dl_config)
    version_dir = os.fspath(builder.data_path)
    meta = {
        "format": plan.layouts[0].format,
        "inputs": [lay.path for lay in plan.layouts],
        "image_shape": list(plan.image_shape),
        "channel_names": plan.channel_names,
        "target_names": plan.target_names,
        "label_names": plan.label_names,
        "num_targets": len(plan.target_names),
        "nan_policy": plan.nan_policy,
        "holdout": list(schemas.parse_holdout(holdout)) if holdout is not None else None,
        "splits": {s: plan.results[s] for s in plan.split_names},
        "channel_stats_split": plan.stats_split,
        "channel_stats": plan.channel_stats,
        "sha256_definition": (
            "sha256 over records in order of: image float32 little-endian C-order (H,W,C) bytes, "
            "label int64 little-endian, targets float32 little-endian (if K>0)"
        ),
        "log1p_definition": meta_lib.FORMULAS["log1p"] + ", per pixel",
        "tfds_builder": {"name": BUILDER_NAME, "version": BUILDER_VERSION,
                         "file_format": "tfrecord"},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mae_jax_version": _version(),
    }
    if meta["label_names"] is None:
      del meta["label_names"]
    with open(os.path.join(version_dir, meta_lib.META_FILE), "w") as f:
      json.dump(meta, f, indent=1)
    old = os.path.join(partial, "old")
    if os.path.exists(output):  # overwrite=True: the old one goes where a rerun removes it
      os.rename(output, old)
    try:
      os.rename(version_dir, output)
    except OSError:
      if os.path.exists(old):  # keep the old dataset
        os.rename(old, output)
      raise
  except Exception as e:
    _raise_if_disk_full(e, output)
    raise
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  return meta


def _raise_if_disk_full(e: Exception, output: str) -> None:
  full = errors.disk_full_error(e, output, "the partial conversion is removed and nothing was "
                                "written to the output")
  if full is not None:
    raise full from e


def _wrap_read_error(split: str, output: str, e: Exception) -> VerificationError:
  return VerificationError(
      f"split '{split}' of {output}: cannot read records back ({type(e).__name__}: {e})")


def verify(output: str, batch_size: int = 64) -> dict:
  """Re-read `output` through TFDS and check it against its metadata.

  Recomputes per split the record count, label counts, image/target sums and
  the sha256 over records; raises `VerificationError` naming the split
  and what mismatched. Returns `{split: recomputed summary}`.
  """
  pipeline.hide_accelerators_from_tf()
  output = os.path.abspath(os.fspath(output))
  meta = meta_lib.load_meta(output)
  try:
    builder = tfds.builder_from_directory(output)
  except Exception as e:
    raise VerificationError(
        f"{output}: not a readable TFDS directory ({type(e).__name__}: {e})") from e
  shape = tuple(meta["image_shape"])
  k = len(meta.get("target_names", []))
  feats = builder.info.features
  if tuple(feats["image"].shape) != shape:
    raise VerificationError(
        f"{output}: image feature shape {feats['image'].shape} != meta {list(shape)}")
  if (k > 0) != ("targets" in feats):
    raise VerificationError(f"{output}: targets feature presence does not match {k} target names")
  extra = set(builder.info.splits.keys()) - set(meta["splits"])
  if extra:
    raise VerificationError(
        f"{output}: split(s) {sorted(extra)} in TFDS info but not in {meta_lib.META_FILE}")
  out = {}
  for split, sm in meta["splits"].items():
    if split not in builder.info.splits:
      raise VerificationError(f"split '{split}': missing from the TFDS dataset info of {output}")
    info_n = builder.info.splits[split].num_examples
    if sm["num_examples"] != sm["num_input"] - sm["num_dropped"]:
      raise VerificationError(
          f"split '{split}': meta num_examples {sm['num_examples']} != "
          f"num_input {sm['num_input']} - num_dropped {sm['num_dropped']}"
      )
    if sm["num_dropped"] != len(sm["dropped_indices"]):
      raise VerificationError(
          f"split '{split}': num_dropped {sm['num_dropped']} != "
          f"{len(sm['dropped_indices'])} dropped_indices"
      )
    if info_n != sm["num_examples"]:
      raise VerificationError(
          f"split '{split}': TFDS info has {info_n} examples but meta says {sm['num_examples']}"
      )
    acc = _SplitAccumulator(shape[2], k, channel_stats=False)
    last_idx = {}
    try:
      ds = builder.as_dataset(
          split=split, shuffle_files=False, read_config=tfds.ReadConfig(try_autocache=False)
      ).batch(batch_size)
      for batch in tfds.as_numpy(ds):
        img = batch["image"]
        if img.dtype != np.float32 or tuple(img.shape[1:]) != shape:
          raise VerificationError(
              f"split '{split}': image batch {img.dtype} {img.shape} != float32 {shape}")
        tgt = batch["targets"] if k else np.zeros((img.shape[0], 0), np.float32)
        for s, i in zip(batch["source"].tolist(), batch["index"].tolist()):
          if s in last_idx and i <= last_idx[s]:
            raise VerificationError(
                f"split '{split}': records out of order (source {s} index {i} after {last_idx[s]})"
            )
          last_idx[s] = i
        acc.update(img, batch["label"].astype(np.int64), tgt)
    except VerificationError:
      raise
    except (tf.errors.OpError, OSError, ValueError, RuntimeError) as e:
      raise _wrap_read_error(split, output, e) from e
    got = acc.split_meta()
    for key in ("num_examples", "label_counts", "image_sum", "target_sum", "sha256"):
      if key.endswith("_sum"):
        same = np.allclose(got[key], sm[key], rtol=1e-6, atol=1e-6)
      else:
        same = got[key] == sm[key]
      if not same:
        raise VerificationError(
            f"split '{split}': {key} {got[key]} read back != {sm[key]} in the metadata")
    out[split] = got
  return out


# CLI.


def _convert_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m mae_jax.data.convert",
      description="Convert E2E jet-image files to a TFDS (TFRecord) dataset. "
      "Use 'python -m mae_jax.data.convert verify DIR' to check a converted dataset.",
  )
  p.add_argument("--input", "-i", nargs="+", required=True,
                 help="input HDF5/parquet file(s), concatenated in order")
  p.add_argument("--output", "-o", required=True, help="output dataset directory (must not exist)")
  p.add_argument("--format", default="auto", choices=("auto",) + schemas.FORMATS)
  p.add_argument("--nan-policy", default="reject", choices=("reject", "drop"))
  p.add_argument("--bad-indices", default=None,
                 help="JSON {split: [idx]} or text file of 'split:index' lines")
  p.add_argument("--holdout", default=None,
                 help="VAL,TEST fractions for single-split formats (last rows)")
  p.add_argument("--chunk-size", type=int, default=256, help="images read per chunk")
  p.add_argument("--writer-buffer-mb", type=int, default=256,
                 help="TFDS writer in-memory buffer cap (MB)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
  p.add_argument("--verify", action="store_true", help="run verify on the output after converting")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  if argv and argv[0] == "verify":
    p = argparse.ArgumentParser(prog="python -m mae_jax.data.convert verify")
    p.add_argument("dir")
    a = p.parse_args(argv[1:])
    try:
      res = verify(a.dir)
    except (VerificationError, FileNotFoundError) as e:
      print(f"VERIFY FAILED: {e}", file=sys.stderr)
      return 1
    print(json.dumps({s: {"num_examples": r["num_examples"], "sha256": r["sha256"]}
                      for s, r in res.items()}))
    print(f"OK: {a.dir}")
    return 0
  a = _convert_parser().parse_args(argv)
  try:
    # TFDS prints progress messages to stdout; keep stdout for the JSON summary.
    with contextlib.redirect_stdout(sys.stderr):
      meta = convert(
          a.input, a.output, format=a.format, nan_policy=a.nan_policy, bad_indices=a.bad_indices,
          holdout=a.holdout, chunk_size=a.chunk_size, overwrite=a.overwrite,
          writer_buffer_mb=a.writer_buffer_mb,
      )
  except USER_ERRORS as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 2
  summary = {s: {k: v for k, v in m.items() if k != "dropped_indices"}
             for s, m in meta["splits"].items()}
  print(json.dumps({"output": os.path.abspath(a.output), "format": meta["format"],
                    "splits": summary}, indent=1))
  if a.verify:
    try:
      verify(a.output)
    except VerificationError as e:
      print(f"VERIFY FAILED: {e}", file=sys.stderr)
      return 1
    print(f"verified: {a.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
