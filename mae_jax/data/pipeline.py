"""tf.data input pipeline over a converted dataset (see `mae_jax.data.convert`).

Each process reads its own part of a split (`tfds.even_splits` by process
index), so per-host batches are disjoint; `parallel.global_batch` turns them
into global arrays. Training order is a pure function of (seed, step): the
stream is repeat -> shuffle(seed) -> skip(start_step * local_batch), and the
skip runs on still-encoded records, so resuming at step k re-reads k batches
of compressed bytes but decodes none of them.

Normalisation (config `data.normalization`) is `mae_jax.data.meta.normalize`.

Reflections (config `data.reflect`: none | eta | phi | both; `mae_jax.data.augment`):
training examples only are flipped along η (image axis 0) and/or φ (axis 1), each with
probability 1/2, drawn from (seed, position in the shuffled stream), so batch k is the same
whatever `start_step` was. The flip is applied to the raw image before normalisation and
before the occupied patches are found, so `patch_ids` are those of the flipped image.
Evaluation batches are never flipped; with "none" nothing in the stream changes.

Sparse tokens (`tokens=Tokens(patch, bucket, sort_window)`, for the sparse-token
MAE): each example also gets `patch_ids`, the ascending indices of its patches
that hold any non-zero pixel (found on the raw image, before normalisation), and
batches pad them with -1 to a bucket length (`bucket_length`), so the jitted
step compiles for a few lengths only. With `sort_window` W > 0, training takes
windows of W batches, sorts each window's jets by occupancy, and emits its W
batches in a seeded order: each batch then pads little. A window is a pure
function of (seed, window index), so resuming stays exact and cheap (whole
windows are skipped as encoded records).

Damaged records (`on_corrupt`, config `data.on_corrupt`): with "stop" a record that
cannot be read ends iteration with `errors.CorruptDataError`, one line naming the shard
file, the split and the byte offset. With "skip" unreadable records are skipped: TFRecord
framing cannot be resynchronised past a corrupted record, so the rest of that shard is
lost; each split's shards are scanned once to count them (`Pipeline.unreadable`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from typing import Iterator, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from tensorflow.experimental import numpy as tnp

from mae_jax import errors
from mae_jax.data import augment
from mae_jax.data import meta as meta_lib


# The map functions are plain TensorFlow (their Python branches test Python values, never
# tensors), so AutoGraph has nothing to convert; left on, it fails to parse the lambdas, warns,
# and its warnings hold the pipeline alive until the log records go.
_plain = tf.autograph.experimental.do_not_convert


def hide_accelerators_from_tf() -> None:
  """TF must never take the accelerator from JAX (called by the pipeline and the converter,
  not at import)."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # devices already initialised: TF saw no GPU or it is too late to change
    pass


def _dataset_info(data_dir: str) -> dict:
  path = os.path.join(data_dir, "dataset_info.json")
  if not os.path.exists(path):
    raise errors.MissingPathError(f"{data_dir}: dataset_info.json missing; not a converted dataset")
  with open(path) as f:
    return json.load(f)


def shard_files(data_dir: str) -> dict[str, list[tuple[str, int]]]:
  """{split: [(shard file, number of records)]}, from dataset_info.json."""
  info = _dataset_info(data_dir)
  out = {}
  for split in info.get("splits", []):
    lengths = [int(n) for n in split.get("shardLengths", [])]
    prefix = os.path.join(data_dir, f"{info['name']}-{split['name']}.tfrecord")
    out[split["name"]] = [(f"{prefix}-{i:05d}-of-{len(lengths):05d}", n)
                          for i, n in enumerate(lengths)]
  return out


def check_shards(data_dir: str) -> None:
  """Fails fast on a missing or truncated shard, before any long work starts.

  A TFRecord file is its records' bytes plus 16 framing bytes per record, and
  TFDS stores both counts in dataset_info.json, so sizes alone reveal damage.
  """
  num_bytes = {s["name"]: int(s.get("numBytes", 0))
               for s in _dataset_info(data_dir).get("splits", [])}
  for split, shards in shard_files(data_dir).items():
    missing = [f for f, _ in shards if not os.path.exists(f)]
    if missing:
      raise errors.MissingPathError(f"{data_dir}: split {split!r} shard missing: {missing[0]}")
    want = num_bytes[split] + 16 * sum(n for _, n in shards)
    have = sum(os.path.getsize(f) for f, _ in shards)
    if have != want:
      raise errors.CorruptDataError(
          f"{data_dir}: split {split!r} shards hold {have} bytes but the dataset "
          f"records {want}: a shard is truncated or corrupted; reconvert, or run "
          f"`python -m mae_jax.data.convert verify {data_dir}`")


def _count_records(path: str) -> tuple[int, str]:
  """(records readable from the start of one TFRecord file, the error that stopped it or "")."""
  n = int(tf.data.TFRecordDataset(path).ignore_errors().reduce(np.int64(0), lambda c, _: c + 1))
  try:  # the records after n cannot be read: what stops them
    for _ in tf.data.TFRecordDataset(path).skip(n).take(1):
      pass
  except tf.errors.OpError as e:
    return n, _op_message(e)
  return n, ""


def _op_message(e: Exception) -> str:
  """A TF op error's own text, without the function-node and op decorations."""
  text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(e).strip().splitlines()[0])
  return re.sub(r"\s*\[Op:\w+\].*$", "", text).strip()


class Tokens(NamedTuple):
  """What the sparse-token MAE needs from the pipeline (see the module docstring)."""
  patch: int
  bucket: int = 16
  sort_window: int = 0


def bucket_length(n: int, base: int = 16) -> int:
  """Padded token-list length for at most n tokens: a multiple of `base` up to 8 * base,
  of 2 * base up to 16 * base, then of 4 * base (<= 1/8 padding beyond 8 * base, and
  a few dozen lengths at most, each compiled once)."""
  n = max(int(n), 1)
  step = base if n <= 8 * base else (2 * base if n <= 16 * base else 4 * base)
  return -(-n // step) * step


def _pad_tokens(batch, bucket: int):
  """Pads (or trims trailing -1 columns of) batch["patch_ids"] to bucket_length(max count)."""
  ids = batch["patch_ids"]
  n = tf.reduce_max(tf.reduce_sum(tf.cast(ids >= 0, tf.int32), axis=1))
  n = tf.maximum(n, 1)  # bucket_length in tf ops
  step = tf.where(n <= 8 * bucket, bucket, tf.where(n <= 16 * bucket, 2 * bucket, 4 * bucket))
  k = (n + step - 1) // step * step
  width = tf.shape(ids)[1]
  ids = tf.cond(width >= k, lambda: ids[:, :k],
                lambda: tf.pad(ids, [[0, 0], [0, k - width]], constant_values=-1))
  return {**batch, "patch_ids": ids}


def _process_split(split: str, process_index: int, process_count: int) -> str:
  if process_count == 1:
    return split
  return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


class Pipeline:
  """Builds train and eval iterators of host-local numpy batches."""

  def __init__(self, data_dir: str, normalization: str = "log1p",
               process_index: int = 0, process_count: int = 1, host_split: str = "shard",
               tokens: Tokens | None = None, on_corrupt: str = "stop", reflect: str = "none"):
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
      raise errors.UsageError(f"data.host_split={host_split!r}; choose 'shard' or 'interleave'")
    self.host_split = host_split
    self.tokens = tokens
    if on_corrupt not in ("stop", "skip"):
      raise errors.UsageError(f"data.on_corrupt={on_corrupt!r}; choose 'stop' or 'skip'")
    self.on_corrupt = on_corrupt
    self.reflect = augment.check_reflect(reflect)  # training batches only
    names = self.meta.get("channel_names") or []
    if self.reflect != "none" and len(names) != self.image_shape[-1]:
      # without a name per channel the signed impact-parameter channels (d0, dz) are unknown,
      # and a reflection that does not negate them would change the physics of the jet
      raise errors.UsageError(
          f"data.reflect={self.reflect!r} needs a name per channel to find the signed ones "
          f"(d0, dz); {data_dir} records {len(names)} channel_names for "
          f"{self.image_shape[-1]} channels: set data.reflect='none' or reconvert the data")
    self.unreadable = {}  # on_corrupt="skip": {split: records skipped in each pass}
    if tokens is not None:
      h, w = self.image_shape[:2]
      if tokens.patch <= 0 or h % tokens.patch or w % tokens.patch:
        raise errors.UsageError(f"patch {tokens.patch} does not divide the image size {h}x{w}")
      if tokens.sort_window and host_split == "interleave" and process_count > 1:
        raise errors.UsageError(
            "data.sort_window needs data.host_split='shard' with several processes")

  def _records(self, split, whole=False):
    if split not in self.meta["splits"]:
      raise errors.UsageError(f"split {split!r} not in {self.data_dir}; it has "
                       f"{sorted(self.meta['splits'])}")
    name = split
    if not whole:
      split = _process_split(split, self.process_index, self.process_count)
    skip = self.on_corrupt == "skip"
    # TFDS asserts the record count, an error that ignore_errors() would retry forever
    ds = self.builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()},
                                 shuffle_files=False,
                                 read_config=tfds.ReadConfig(assert_cardinality=not skip))
    if skip:
      self._count_unreadable(name)
      ds = ds.ignore_errors()
    return ds

  def _count_unreadable(self, split):
    """Scans a split's shards once for records that cannot be read, and warns about them."""
    if split in self.unreadable:
      return
    lost, first = 0, ""
    for path, n in shard_files(self.data_dir)[split]:
      readable, why = _count_records(path)
      lost += n - readable
      if n > readable and not first:
        first = f"{path}: {why}"
    self.unreadable[split] = lost
    if lost:
      logging.warning("data.on_corrupt=skip: skipping %d unreadable records of %d in split %r "
                      "of %s in each pass (%s; the rest of a shard after a damaged record "
                      "cannot be read)", lost, int(self.meta["splits"][split]["num_examples"]),
                      split, self.data_dir, first)

  def _guarded(self, it, split):
    """Yields from `it`; a record that cannot be read becomes one CorruptDataError line."""
    try:
      yield from it
    except (tf.errors.DataLossError, tf.errors.NotFoundError,
            tf.errors.PermissionDeniedError) as e:
      raise self._read_error(split, e) from e

  def _read_error(self, split, e) -> errors.CorruptDataError:
    text = _op_message(e)
    hint = (f"run `python -m mae_jax.data.convert verify {self.data_dir}` and reconvert, or set "
            "--config.data.on_corrupt=skip to skip unreadable records")
    m = re.search(r"(corrupted|truncated) record at (\d+)", text)
    if not m:
      return errors.CorruptDataError(
          f"cannot read split {split!r} of {self.data_dir}: {text}; {hint}")
    offset = int(m.group(2))
    shards = [f for f, _ in shard_files(self.data_dir)[split]
              if os.path.exists(f) and os.path.getsize(f) > offset]
    if len(shards) > 1:  # the error does not name the file: find the one failing there
      shards = [f for f in shards if f" record at {offset}" in _count_records(f)[1]] or shards
    where = shards[0] if len(shards) == 1 else f"one of {len(shards)} shards in {self.data_dir}"
    return errors.CorruptDataError(
        f"{m.group(1)} record in {where} (split {split!r}, byte offset {offset}); {hint}")

  def _decode(self, ex, reflect=None):
    """One record -> {image, label[, targets][, patch_ids]}; `reflect` = (seed, stream) flips
    the raw image as drawn for the example's stream position (training only, see augment)."""
    raw = self.builder.info.features["image"].decode_example(ex["image"])
    if reflect is not None:
      raw = augment.reflect(raw, self.reflect, *reflect, ex[augment.POSITION],
                            augment.odd_channels(self.meta.get("channel_names")))
    image = meta_lib.normalize(tf.cast(raw, tf.float32), self.normalization,
                               self.meta.get("channel_stats"), ops=tnp)
    out = {"image": image, "label": ex["label"]}
    if "targets" in ex:
      out["targets"] = ex["targets"]
    if self.tokens is not None:  # occupied patches of the raw image (normalisation may shift 0)
      p = self.tokens.patch
      h, w, c = self.image_shape
      raw = tf.reshape(raw, [h // p, p, w // p, p, c])
      occupied = tf.reshape(tf.reduce_any(tf.not_equal(raw, 0), axis=[1, 3, 4]), [-1])
      out["patch_ids"] = tf.cast(tf.where(occupied)[:, 0], tf.int32)
    return out

  def _batch(self, ds, size, drop_remainder=True):
    """batch(), or with sparse tokens padded_batch() + padding to a bucket length."""
    if self.tokens is None:
      return ds.batch(size, drop_remainder=drop_remainder)
    values = {k: (tf.constant(-1, tf.int32) if k == "patch_ids" else tf.zeros((), s.dtype))
              for k, s in ds.element_spec.items()}
    ds = ds.padded_batch(size, padding_values=values, drop_remainder=drop_remainder)
    return ds.map(_plain(lambda b: _pad_tokens(b, self.tokens.bucket)))

  def _sorted_windows(self, ds, local_batch, seed, first_window):
    """Windows of W batches sorted by occupancy, emitted in a seeded order (see module doc)."""
    w = self.tokens.sort_window
    values = {k: (tf.constant(-1, tf.int32) if k == "patch_ids" else tf.zeros((), s.dtype))
              for k, s in ds.element_spec.items()}
    ds = ds.padded_batch(w * local_batch, padding_values=values, drop_remainder=True)

    def sort(index, window):
      counts = tf.reduce_sum(tf.cast(window["patch_ids"] >= 0, tf.int32), axis=1)
      order = tf.argsort(counts, stable=True)
      groups = tf.reshape(order, [w, local_batch])
      noise = tf.random.stateless_uniform([w], seed=tf.stack([tf.cast(seed, tf.int64), index]))
      order = tf.reshape(tf.gather(groups, tf.argsort(noise)), [-1])
      return tf.data.Dataset.from_tensor_slices(
          {k: tf.reshape(tf.gather(v, order), tf.concat([[w, local_batch], tf.shape(v)[1:]], 0))
           for k, v in window.items()})

    ds = ds.enumerate(start=first_window).flat_map(_plain(sort))
    return ds.map(_plain(lambda b: _pad_tokens(b, self.tokens.bucket)))

  def labels(self, split: str) -> np.ndarray:
    """Labels of a whole split in record order, read without decoding any image."""
    return np.fromiter(self._records(split, whole=True).map(_plain(lambda ex: ex["label"]))
                       .as_numpy_iterator(), np.int64)

  def labelled_subset(self, split: str, n: int, seed: int) -> np.ndarray:
    """Record positions of a class-balanced, seeded subset of n examples of `split`.

    Nested: for one seed, the subset of n is contained in the subset of any m > n
    (each class is a seeded permutation of its records, cut at n/2). Class 0 gets
    n // 2 and class 1 the rest; a class with fewer records is an error.
    """
    labels = self.labels(split)
    want = {0: n // 2, 1: n - n // 2}
    rng = np.random.default_rng([seed, 7919])
    picked = []
    for cls, k in want.items():
      pos = np.flatnonzero(labels == cls)
      if k > len(pos):
        counts = {c: int((labels == c).sum()) for c in np.unique(labels)}
        raise errors.UsageError(f"a class-balanced labelled set of {n} needs {k} examples of class "
                         f"{cls} in split {split!r} of {self.data_dir}; it has {counts}")
      picked.append(rng.permutation(pos)[:k])
    return np.sort(np.concatenate(picked))

  def train_iter(self, split: str, local_batch: int, seed: int, start_step: int = 0,
                 shuffle_buffer: int = 10_000, subset: np.ndarray | None = None) -> Iterator[dict]:
    """Endless shuffled batches; batch k is the same whatever `start_step` was.

    host_split "shard": each process shuffles its own part of the split (reads
    1/P of the data; the default). "interleave": every process walks the same
    shuffled stream of still-encoded records and decodes only its rows of each
    global batch, so the global batches do not depend on the process count (a
    2-process run equals a 1-process run); each process reads all the bytes.
    `subset`: record positions of the split to train on (`labelled_subset`); the
    rest of the split is skipped before decoding.
    """
    interleave = self.host_split == "interleave" and self.process_count > 1
    window = self.tokens.sort_window if self.tokens is not None else 0
    if subset is not None:  # filter the whole split, then give each process its share
      keep = np.zeros(int(self.meta["splits"][split]["num_examples"]), bool)
      keep[np.asarray(subset, np.int64)] = True
      keep = tf.constant(keep)
      ds = self._records(split, whole=True).enumerate()
      ds = ds.filter(_plain(lambda i, ex: tf.gather(keep, i))).map(_plain(lambda i, ex: ex))
      if not interleave and self.process_count > 1:
        ds = ds.shard(self.process_count, self.process_index)
    else:
      ds = self._records(split, whole=interleave)
    ds = ds.repeat()
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    decode = self._decode
    if self.reflect != "none":
      # each example's place in the stream, counted before any skip (resuming sees the same
      # flips); interleave walks one global stream, so its flips ignore the process count
      stream = 0 if interleave else self.process_index
      ds = ds.enumerate().map(_plain(lambda i, ex: {**ex, augment.POSITION: i}))
      decode = functools.partial(self._decode, reflect=(seed, stream))
    if interleave:
      global_batch = local_batch * self.process_count
      lo = self.process_index * local_batch
      ds = ds.skip(start_step * global_batch).batch(global_batch, drop_remainder=True)
      ds = ds.map(_plain(lambda b: {k: v[lo:lo + local_batch] for k, v in b.items()})).unbatch()
    elif window:  # skip whole windows as encoded records, then batches inside one
      ds = ds.skip((start_step // window) * window * local_batch)
    else:
      ds = ds.skip(start_step * local_batch)
    ds = ds.map(_plain(decode), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if window:
      ds = self._sorted_windows(ds, local_batch, seed, start_step // window)
      ds = ds.skip(start_step % window)
    else:
      ds = self._batch(ds, local_batch)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return self._guarded(ds.with_options(options).as_numpy_iterator(), split)

  def sample_images(self, split: str, n: int, seed: int, batch: int = 256) -> Iterator[np.ndarray]:
    """Normalised images [b, H, W, C] of a seeded random sample of `min(n, split size)`
    records of the WHOLE split (every process reads the same ones), in record order, in
    batches; the other records are skipped before decoding. For what is fitted on the data
    once (the codebook of code targets)."""
    ds = self._records(split, whole=True).enumerate()  # an unknown split: one line here
    total = int(self.meta["splits"][split]["num_examples"])
    keep = np.zeros(total, bool)
    keep[np.random.default_rng([seed, 4099]).permutation(total)[:n]] = True
    keep = tf.constant(keep)
    ds = ds.filter(_plain(lambda i, ex: tf.gather(keep, i))).map(_plain(lambda i, ex: ex))
    ds = ds.map(_plain(lambda ex: self._decode(ex)["image"]), num_parallel_calls=tf.data.AUTOTUNE)
    return self._guarded(ds.batch(batch).prefetch(2).as_numpy_iterator(), split)

  def targets_only(self, split: str) -> Iterator[dict]:
    """This host's records of a split without decoding images (for target statistics)."""
    if "targets" not in self.builder.info.features:
      raise errors.UsageError(f"{self.data_dir} has no regression targets")
    return self._guarded(
        self._records(split).map(_plain(lambda ex: {"targets": ex["targets"]}))
        .as_numpy_iterator(), split)

  def eval_iter(self, split: str, local_batch: int, global_batch: int) -> tuple[int, Iterator[dict]]:
    """All of a split once, padded; each batch has `valid` (1 = real example).

    Every process yields the same number of batches (collectives need it).
    """
    total = int(self.meta["splits"][split]["num_examples"])
    num_batches = max(1, math.ceil(total / global_batch))
    ds = self._records(split).map(_plain(self._decode), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(_plain(lambda ex: {**ex, "valid": tf.constant(1.0)}))
    pad = tf.data.Dataset.from_tensors(
        {k: tf.zeros([0] if k == "patch_ids" else s.shape, s.dtype)
         for k, s in ds.element_spec.items()}).repeat()
    ds = self._batch(ds.concatenate(pad), local_batch, drop_remainder=False)
    ds = ds.take(num_batches).prefetch(2)
    return num_batches, self._guarded(ds.as_numpy_iterator(), split)
