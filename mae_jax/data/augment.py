"""Training-time augmentation of centred jet images (config `data.reflect`).

Reflections: a jet image is centred on the jet axis, and the physics of a jet is (to a good
approximation) symmetric under Δη -> -Δη and Δφ -> -Δφ about that axis, so a reflected jet
is another plausible jet of the same class. Image axes (simulation/writer.py, the public E2E
layout; baselines.pixel_grid): an image [H, W, C] has pseudorapidity η along axis 0 (rows)
and azimuth φ along axis 1 (columns).

  none   no change (the default; the pipeline is then exactly what it was without this)
  eta    each training jet is flipped along η (axis 0) with probability 1/2
  phi    each training jet is flipped along φ (axis 1) with probability 1/2
  both   each of the two flips is drawn independently, each with probability 1/2

A reflection of the event also flips the sign of the impact parameter it mirrors: with the
generator's (and CMS's) definitions d0 = (y·p_x − x·p_y)/p_T changes sign under φ -> −φ and
dz under η -> −η (z -> −z), so a φ flip negates the channels named `*d0*` and an η flip those
named `*dz*` (`odd_channels`); every other channel is even.

Each jet's draw is a pure function of (seed, stream, position in the shuffled training
stream), so runs are reproducible and resuming at any step sees the same flips. Evaluation
never reflects (the pipeline applies this in `train_iter` only).

This module imports TensorFlow only inside `reflect` (the config check is light).
"""

from __future__ import annotations

from mae_jax.errors import UsageError

REFLECTIONS = ("none", "eta", "phi", "both")
AXES = {"eta": 0, "phi": 1}  # image axis of each reflection ([H, W, C]: rows η, columns φ)
POSITION = "_position"  # key of the stream position a training example carries to `reflect`
# folded into the seed so that the flips are not the same draws as the sort windows' order
_SALT = 0x5EF1EC7


def check_reflect(mode: str) -> str:
  if mode not in REFLECTIONS:
    raise UsageError(f"data.reflect={mode!r}; choose one of {', '.join(REFLECTIONS)}")
  return mode


def flip_axes(mode: str) -> tuple[int, ...]:
  """The image axes `mode` may flip, e.g. 'both' -> (0, 1)."""
  check_reflect(mode)
  return tuple(AXES[a] for a in AXES if mode in (a, "both"))


def flips(mode: str, seed: int, stream: int, position):
  """[len(flip_axes(mode))] bool tensor: which of the axes to flip for the example at
  `position` (int64 scalar tensor) of training stream `stream` (process) under `seed`."""
  import tensorflow as tf
  key = tf.random.experimental.stateless_fold_in(
      tf.constant([seed, _SALT], tf.int64), tf.cast(stream, tf.int64))
  key = tf.random.experimental.stateless_fold_in(key, tf.cast(position, tf.int64))
  return tf.random.stateless_uniform([len(flip_axes(mode))], seed=key) < 0.5


ODD = {0: "dz", 1: "d0"}  # image axis -> the signed channel its reflection negates


def odd_channels(channel_names) -> dict:
  """{axis: [C] float32 signs}: -1 for the channels a reflection along that axis negates."""
  import numpy as np
  names = list(channel_names or [])
  return {axis: np.array([-1.0 if tag in n else 1.0 for n in names], np.float32)
          for axis, tag in ODD.items()}


def reflect(image, mode: str, seed: int, stream: int, position, signs: dict | None = None):
  """`image` [H, W, C] flipped along each axis of `mode` whose draw says so (see `flips`);
  `signs` ({axis: [C]}, `odd_channels`) negates the signed channels that axis mirrors."""
  import tensorflow as tf
  for axis, flip in zip(flip_axes(mode), tf.unstack(flips(mode, seed, stream, position))):
    flipped = tf.reverse(image, [axis])
    if signs is not None and axis in signs:  # one sign per channel (the pipeline checks)
      flipped = flipped * tf.constant(signs[axis], image.dtype)
    image = tf.where(flip, flipped, image)
  return image
