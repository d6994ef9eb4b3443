"""The TFDS builder that writes a conversion plan's records (the one-process engine).

Split out of `mae_jax.data.convert` (which drives it, and re-exports
`MaeJaxConverted`, `BUILDER_NAME` and `BUILDER_VERSION`); `mae_jax.data.beam_convert`
subclasses the builder to generate its splits with Beam.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from mae_jax.data import records, schemas, splits
from mae_jax.data.records import Plan
from mae_jax.errors import DataFormatError

BUILDER_NAME = "mae_jax_converted"
BUILDER_VERSION = "1.0.0"
_HKEY_SPACE = 1 << 128  # TFDS shuffler key space (keys spread over it keep buckets balanced)


# Conversion (one process).


def _raise_nonfinite(plan: Plan, split: str, source: int, first: schemas.Chunk) -> None:
  """Lists the non-finite rows of this file's split from chunk `first` on, then raises."""
  found = {"images": [], "targets": []}
  lo = int(splits.positions(plan, split, source, splits.chunk_index(first)[:1])[0])
  for ch in splits.split_chunks(plan, split, source, lo=lo):
    kept = records.filter_chunk(plan, split, source, ch)
    found["images"] += kept.nonfinite_images.tolist()
    found["targets"] += kept.nonfinite_targets.tolist()
  raise records.nonfinite_error(plan.layouts[source], split, found)


def _generate_split(plan: Plan, split: str) -> Iterable[tuple[int, dict[str, Any]]]:
  k = len(plan.target_names)
  acc = records.SplitAccumulator(plan.image_shape[2], k, channel_stats=(split == plan.stats_split))
  dropped: list[list[int]] = []
  n_nonfinite = n_badidx = 0
  total = plan.num_input(split)
  stride = _HKEY_SPACE // max(total, 1)
  key = 0
  for source, _ in plan.inputs_for(split):
    for chunk in splits.split_chunks(plan, split, source):
      kept = records.filter_chunk(plan, split, source, chunk)
      bad = np.union1d(kept.nonfinite_images, kept.nonfinite_targets)
      if bad.size and plan.nan_policy == "reject":
        _raise_nonfinite(plan, split, source, chunk)
      n_nonfinite += int(bad.size)
      n_badidx += kept.num_bad_indices
      dropped += [[source, int(i)] for i in kept.dropped]
      acc.update(kept.images, kept.labels, kept.targets,
                 rows=splits.positions(plan, split, source, kept.index))
      for i in range(kept.images.shape[0]):
        rec = {
            "image": kept.images[i],
            "label": np.int64(kept.labels[i]),
            "index": np.int64(kept.index[i]),
            "source": np.int64(source),
        }
        if k:
          rec["targets"] = kept.targets[i]
        yield key, rec
        key += stride
    acc.next_source()
  if acc.n == 0:
    raise DataFormatError(f"split '{split}': no examples left after dropping {len(dropped)} rows")
  plan.results[split] = dict(acc.split_meta(), num_input=int(total), num_dropped=len(dropped),
                             num_dropped_nonfinite=n_nonfinite, num_dropped_bad_indices=n_badidx,
                             dropped_indices=dropped)
  if acc.do_stats:
    plan.channel_stats = acc.channel_stats()


def _features(plan: Plan) -> tfds.features.FeaturesDict:
  if plan.image_encoding == "sparse":
    from mae_jax.data.sparse_image import SparseImage

    image = SparseImage(plan.image_shape)
  else:
    image = tfds.features.Tensor(shape=tuple(plan.image_shape), dtype=np.float32,
                                 encoding=tfds.features.Encoding.ZLIB)
  feats = {
      "image": image,
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

  def __init__(self, *, plan: Plan, **kwargs):
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


def writer_buffer(limit_bytes: int | None):
  """Caps TFDS's in-memory shuffle buffer (default 1 GB) inside the `with` block.

  TFDS 4.9 has no per-writer option: every Shuffler reads the module constant
  `shuffle.MAX_MEM_BUFFER_SIZE`, so that one TFDS constant is patched for the block.
  """
  if limit_bytes is None:
    return contextlib.nullcontext()
  return mock.patch.object(tfds_shuffle, "MAX_MEM_BUFFER_SIZE", int(limit_bytes))
