"""Dataset metadata and input normalisation: one home for both.

A converted dataset directory (`python -m mae_jax.data.convert`) holds
`mae_jax_meta.json` (`META_FILE`): image shape, channel and target names, split
counts and checksums, and per-channel statistics of the train split. The input
pipeline, the export sidecar and `export.normalize_images` all normalise pixels
with `normalize` below, so a model sees the same numbers wherever it runs.

Normalisations (config `data.normalization`), per channel c:
  none          x
  div255        x / 255                        (files stored pre-scaled to 0..255)
  log1p         sign(x) log1p(|x|)             (sign kept for the d0/dz channels)
  zscore        (x - mean[c]) / max(std[c], 1e-6)               (train-split stats)
  log1p_zscore  (sign(x) log1p(|x|) - log1p_mean[c]) / max(log1p_std[c], 1e-6)

This module imports neither TensorFlow nor JAX.
"""

from __future__ import annotations

import json
import os

import numpy as np

from mae_jax.errors import MissingPathError, UsageError

META_FILE = "mae_jax_meta.json"
STD_FLOOR = 1e-6

FORMULAS = {
    "none": "x",
    "div255": "x / 255",
    "log1p": "sign(x) * log1p(|x|)",
    "zscore": "(x - mean[c]) / max(std[c], 1e-6)",
    "log1p_zscore": "(sign(x) * log1p(|x|) - log1p_mean[c]) / max(log1p_std[c], 1e-6)",
}
NORMALIZATIONS = tuple(FORMULAS)


def load_meta(data_dir) -> dict:
  """The metadata of a converted dataset; a clear error if `data_dir` is not one."""
  path = os.path.join(os.fspath(data_dir), META_FILE)
  if not os.path.exists(path):
    raise MissingPathError(
        f"{data_dir} is not a converted mae_jax dataset ({META_FILE} missing); make one with "
        "`python -m mae_jax.data.convert --input FILE.h5 --output DIR`.")
  with open(path) as f:
    return json.load(f)


def check_normalization(mode: str) -> str:
  if mode not in NORMALIZATIONS:
    raise UsageError(f"data.normalization={mode!r}; choose one of {NORMALIZATIONS}")
  return mode


def _stats(mode: str, stats: dict | None, *names):
  stats = stats or {}
  missing = [n for n in names if n not in stats]
  if missing:
    raise UsageError(f"normalization {mode!r} needs channel_stats {missing} in the dataset "
                     "metadata; reconvert the dataset")
  out = [np.asarray(stats[n], np.float32) for n in names]
  out[-1] = np.maximum(out[-1], np.float32(STD_FLOOR))  # the last one is a std
  return out


class _Numpy:
  """The four array functions `normalize` needs, for numpy inputs."""
  sign, log1p, abs = np.sign, np.log1p, np.abs


def normalize(x, mode: str, stats: dict | None = None, ops=_Numpy):
  """Normalised pixels, channels last. `ops` supplies sign/log1p/abs for the array type:
  numpy by default; the tf.data pipeline passes `tf.experimental.numpy`."""
  check_normalization(mode)
  if mode == "none":
    return x
  if mode == "div255":
    return x / 255.0
  if mode == "zscore":
    mean, std = _stats(mode, stats, "mean", "std")
    return (x - mean) / std
  slog = ops.sign(x) * ops.log1p(ops.abs(x))
  if mode == "log1p":
    return slog
  mean, std = _stats(mode, stats, "log1p_mean", "log1p_std")
  return (slog - mean) / std


def denormalize(y, mode: str, stats: dict | None = None):
  """Inverse of `normalize` (numpy): normalised values back to pixel units."""
  check_normalization(mode)
  y = np.asarray(y, np.float32)
  if mode == "none":
    return y
  if mode == "div255":
    return y * 255.0
  if mode == "zscore":
    mean, std = _stats(mode, stats, "mean", "std")
    return y * std + mean
  if mode == "log1p_zscore":
    mean, std = _stats(mode, stats, "log1p_mean", "log1p_std")
    y = y * std + mean
  return np.sign(y) * np.expm1(np.abs(y))


def is_signed_channel(meta: dict, channel: int) -> bool:
  """Channels whose pixels can be negative (impact parameters d0/dz): energy sums and
  ratios are meaningless there."""
  names = meta.get("channel_names") or []
  name = names[channel] if channel < len(names) else ""
  return any(tag in name for tag in ("d0", "dz"))
