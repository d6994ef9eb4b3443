"""Encoder features in PyTorch that match mae_jax's, for dense and sparse-token encoders.

The sparse-token MAE (`mae_jax.models.sparse`, config `model.tokens=sparse`) encodes
each jet's *occupied* patches only (any non-zero pixel in any channel), CLS first,
each token at its patch's position; its probe features are the CLS token or the
mean over those tokens. A `transformers.ViTMAEModel` holding the exported weights
computes the same thing when it keeps exactly the occupied patches: the `noise`
argument ranks them first (in ascending patch order) and the mask ratio keeps `k`
of them. `k` differs per jet, so jets go one at a time.

  from mae_jax.export.torch_features import torch_features
  feats = torch_features(vitmae_model, images_nhwc_normalised, patch=5, tokens="sparse")
  feats["mean"], feats["cls"]   # numpy [B, D]

The images must be normalised as the sidecar's `input` block says
(`mae_jax.export.normalize_images`). A jet with no occupied patch has no tokens:
its features are NaN.
"""

from __future__ import annotations

import numpy as np

TOKEN_MODES = ("dense", "sparse")


def occupied(image: np.ndarray, patch: int) -> np.ndarray:
  """One image [H, W, C] -> ascending indices of its patches holding a non-zero pixel."""
  h, w, c = image.shape
  x = image.reshape(h // patch, patch, w // patch, patch, c)
  return np.flatnonzero(np.any(x != 0, axis=(1, 3, 4)))


def torch_features(model, images: np.ndarray, patch: int, tokens: str = "sparse") -> dict:
  """{"cls", "mean"} [B, D] float32 and "num_tokens" [B] of a `transformers.ViTMAEModel`.

  Args:
    model: a ViTMAEModel (or the `.vit` of ViTMAEForPreTraining) with the exported weights.
    images: [B, H, W, C] normalised pixels, channels last (mae_jax's layout).
    patch: the patch size (the sidecar's model.patch).
    tokens: "sparse" (occupied patches, as the sparse-token encoder) or "dense" (all).
  """
  import torch  # optional dependency (mae_jax[torch])

  if tokens not in TOKEN_MODES:
    raise ValueError(f"tokens={tokens!r}; choose one of {TOKEN_MODES}")
  images = np.asarray(images, np.float32)
  b, h, w, _ = images.shape
  n = (h // patch) * (w // patch)
  cls, mean, counts = [], [], []
  saved = model.config.mask_ratio
  try:
    for i in range(b):
      ids = occupied(images[i], patch) if tokens == "sparse" else np.arange(n)
      counts.append(ids.size)
      if ids.size == 0:
        cls.append(np.full(model.config.hidden_size, np.nan, np.float32))
        mean.append(cls[-1])
        continue
      noise = np.arange(n, dtype=np.float32) + n  # kept first: the occupied, in patch order
      noise[ids] = np.arange(ids.size, dtype=np.float32)
      # ViTMAE keeps int(n * (1 - ratio)) tokens: half a token of margin against rounding
      model.config.mask_ratio = (n - ids.size - 0.5) / n if ids.size < n else 0.0
      x = torch.from_numpy(images[i:i + 1].transpose(0, 3, 1, 2).copy())
      with torch.no_grad():
        out = model(pixel_values=x, noise=torch.from_numpy(noise[None])).last_hidden_state[0]
      out = out.numpy()
      if out.shape[0] != 1 + ids.size:
        raise RuntimeError(f"ViTMAE kept {out.shape[0] - 1} tokens of jet {i}, not {ids.size}")
      cls.append(out[0])
      mean.append(out[1:].mean(axis=0))
  finally:
    model.config.mask_ratio = saved
  return {"cls": np.stack(cls), "mean": np.stack(mean), "num_tokens": np.asarray(counts)}
