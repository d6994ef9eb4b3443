"""tf.data input pipeline over a converted dataset (see `mae_jax.data.convert`).

Each process reads its own part of a split (`tfds.even_splits` by process
index), so per-host batches are disjoint; `parallel.global_batch` turns them
into global arrays. Training order is a pure function of (seed, step): the
stream is repeat -> shuffle(seed) -> skip(start_step * local_batch), and the
skip runs on still-encoded records, so resuming at step k re-reads k batches
of compressed bytes but decodes none of them.

Normalisation (config `data.normalization`) is `mae_jax.data.meta.normalize`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow.experimental import numpy as tnp

from mae_jax.data import meta as meta_lib


def hide_accelerators_from_tf() -> None:
  """TF must never take the accelerator from JAX (called by the pipeline and the converter,
  not at import)."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # devices already initialised: TF saw no GPU or it is too late to change
    pass


def check_shards(data_dir: str) -> None:
  """Fails fast on a missing or truncated shard, before any long work starts.

  A TFRecord file is its records' bytes plus 16 framing bytes per record, and
  TFDS stores both counts in dataset_info.json, so sizes alone reveal damage.
  """
  path = os.path.join(data_dir, "dataset_info.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{data_dir}: dataset_info.json missing; not a converted dataset")
  with open(path) as f:
    info = json.load(f)
  for split in info.get("splits", []):
    lengths = [int(n) for n in split.get("shardLengths", [])]
    files = [os.path.join(data_dir, f"{info['name']}-{split['name']}.tfrecord-{i:05d}-of-{len(lengths):05d}")
             for i in range(len(lengths))]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
      raise FileNotFoundError(f"{data_dir}: split {split['name']!r} shard missing: {missing[0]}")
    want = int(split.get("numBytes", 0)) + 16 * sum(lengths)
    have = sum(os.path.getsize(f) for f in files)
    if have != want:
      raise ValueError(
          f"{data_dir}: split {split['name']!r} shards hold {have} bytes but the dataset "
          f"records {want}: a shard is truncated or corrupted; reconvert, or run "
          f"`python -m mae_jax.data.convert verify {data_dir}`")


def _process_split(split: str, process_index: int, process_count: int) -> str:
  if process_count == 1:
    return split
  return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


class Pipeline:
  """Builds train and eval iterators of host-local numpy batches."""

  def __init__(self, data_dir: str, normalization: str = "log1p",
               process_index: int = 0, process_count: int = 1, host_split: str = "shard"):
    self.data_dir = data_dir
    hide_accelerators_from_tf()
    self.meta = meta_lib.load_meta(data_dir)
    check_shards(data_dir)
    self.builder = tfds.builder_from_directory(data_dir)
    self.image_shape = tuple(self.meta["image_shape"])
    self.normalization = meta_lib.check_normalization(normalization)
    meta_lib.normalize(np.zeros(self.image_shape[-1:], np.float32), normalization,
                       self.meta.get("channel_stats"))  # fails now if statistics are missing
    self.process_index, self.process_count = process_index, process_count
    if host_split not in ("shard", "interleave"):
      raise ValueError(f"data.host_split={host_split!r}; choose 'shard' or 'interleave'")
    self.host_split = host_split

  def _records(self, split, whole=False):
    if split not in self.meta["splits"]:
      raise ValueError(f"split {split!r} not in {self.data_dir}; it has "
                       f"{sorted(self.meta['splits'])}")
    if not whole:
      split = _process_split(split, self.process_index, self.process_count)
    return self.builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()},
                                   shuffle_files=False)

  def _decode(self, ex):
    image_feature = self.builder.info.features["image"]
    image = image_feature.decode_example(ex["image"])
    image = meta_lib.normalize(tf.cast(image, tf.float32), self.normalization,
                               self.meta.get("channel_stats"), ops=tnp)
    out = {"image": image, "label": ex["label"]}
    if "targets" in ex:
      out["targets"] = ex["targets"]
    return out

  def train_iter(self, split: str, local_batch: int, seed: int, start_step: int = 0,
                 shuffle_buffer: int = 10_000) -> Iterator[dict]:
    """Endless shuffled batches; batch k is the same whatever `start_step` was.

    host_split "shard": each process shuffles its own part of the split (reads
    1/P of the data; the default). "interleave": every process walks the same
    shuffled stream of still-encoded records and decodes only its rows of each
    global batch, so the global batches do not depend on the process count (a
    2-process run equals a 1-process run); each process reads all the bytes.
    """
    interleave = self.host_split == "interleave" and self.process_count > 1
    ds = self._records(split, whole=interleave).repeat()
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if interleave:
      global_batch = local_batch * self.process_count
      lo = self.process_index * local_batch
      ds = ds.skip(start_step * global_batch).batch(global_batch, drop_remainder=True)
      ds = ds.map(lambda b: {k: v[lo:lo + local_batch] for k, v in b.items()}).unbatch()
    else:
      ds = ds.skip(start_step * local_batch)
    ds = ds.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).as_numpy_iterator()

  def targets_only(self, split: str) -> Iterator[dict]:
    """This host's records of a split without decoding images (for target statistics)."""
    if "targets" not in self.builder.info.features:
      raise ValueError(f"{self.data_dir} has no regression targets")
    return self._records(split).map(lambda ex: {"targets": ex["targets"]}).as_numpy_iterator()

  def eval_iter(self, split: str, local_batch: int, global_batch: int) -> tuple[int, Iterator[dict]]:
    """All of a split once, padded; each batch has `valid` (1 = real example).

    Every process yields the same number of batches (collectives need it).
    """
    total = int(self.meta["splits"][split]["num_examples"])
    num_batches = max(1, math.ceil(total / global_batch))
    ds = self._records(split).map(self._decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda ex: {**ex, "valid": tf.constant(1.0)})
    element_spec = ds.element_spec
    pad = tf.data.Dataset.from_tensors(
        {k: tf.zeros(s.shape, s.dtype) for k, s in element_spec.items()}).repeat()
    ds = ds.concatenate(pad).batch(local_batch).take(num_batches).prefetch(2)
    return num_batches, ds.as_numpy_iterator()
