"""Re-read a converted dataset through TFDS and check it against its metadata.

  python -m mae_jax.data.convert verify DIR

The same check for every conversion engine (one process or Apache Beam): split
list, counts, feature shapes, then every record read back for the label
counts, image/target sums and the sha256 over records in order.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mae_jax.data import meta as meta_lib
from mae_jax.data import pipeline, records
from mae_jax.errors import VerificationError


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
    acc = records.SplitAccumulator(shape[2], k, channel_stats=False)
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
