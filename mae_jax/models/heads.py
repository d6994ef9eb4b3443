"""Downstream heads on encoder tokens, and the losses that go with them.

`ClassifierHead(num_outputs=1, pool="cls", bn=False)` maps encoder tokens
[B, 1 + N, D] (CLS first, as `MAE.encode(...)["tokens"]`) to [B, num_outputs]:

  pool="cls":  the CLS token.
  pool="mean": mean over the N patch tokens; CLS is NOT included (same as
               `MAE.encode(...)["mean"]`). include_cls=True averages over all
               1 + N tokens, as the SS reference probe did.
  pool="max":  elementwise max over the N patch tokens (CLS excluded unless
               include_cls=True).
  bn=True:     BatchNorm without affine parameters (use_scale=False,
               use_bias=False, epsilon 1e-6) before the Dense, as the MAE
               linear-probe recipe (torch BatchNorm1d(affine=False)); it keeps
               running statistics in the "batch_stats" collection: call with
               train=True and mutable=["batch_stats"] while training.

One head serves binary classification (num_outputs=1: one logit, sigmoid BCE)
and regression (num_outputs = number of targets, e.g. 2 for mass and pT).

Losses (mean over the batch, float32 math):
  binary_cross_entropy_with_logits(logits, labels, label_smoothing=0.0)
  mse(pred, target), huber(pred, target, delta=1.0)
Shapes are checked, never broadcast: a one-unit output [B, 1] pairs with
targets [B] or [B, 1]; [B, 1] - [B] broadcasting to [B, B], and one-hot [B, 2]
labels against a one-unit head, are errors.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mae_jax.errors import UsageError

Dtype = Any

POOLS = ("cls", "mean", "max")


def pool_tokens(tokens: jax.Array, pool: str, include_cls: bool = False,
                valid: jax.Array | None = None) -> jax.Array:
  """[B, 1 + N, D] -> [B, D]; see the module docstring. `valid` [B, 1 + N] (sparse tokens:
  False for padding) restricts mean and max pooling to the real tokens."""
  if tokens.ndim != 3 or tokens.shape[1] < 2:
    raise ValueError(f"tokens must be [B, 1 + N, D] with a CLS token first, got {tokens.shape}")
  if pool not in POOLS:
    raise UsageError(f"pool must be one of {POOLS}, got {pool!r}")
  if pool == "cls":
    return tokens[:, 0]
  x = tokens if include_cls else tokens[:, 1:]
  if valid is None:
    return x.mean(axis=1) if pool == "mean" else x.max(axis=1)
  w = (valid if include_cls else valid[:, 1:])[..., None]
  if pool == "mean":
    return (x * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1).astype(x.dtype)
  return jnp.where(w, x, jnp.finfo(x.dtype).min).max(axis=1)


class ClassifierHead(nn.Module):
  """Pooling -> (BatchNorm without affine) -> Dense(num_outputs)."""
  num_outputs: int = 1
  pool: str = "cls"
  bn: bool = False
  include_cls: bool = False
  bn_momentum: float = 0.9  # flax convention (= torch momentum 0.1)
  kernel_init: Any = nn.initializers.truncated_normal(stddev=0.01)  # MAE probe head init
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, train: bool = False, valid=None):
    x = pool_tokens(tokens, self.pool, self.include_cls, valid)
    if self.bn:
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-6,
                       use_scale=False, use_bias=False, dtype=self.dtype, name="bn")(x)
    return nn.Dense(self.num_outputs, kernel_init=self.kernel_init, dtype=self.dtype,
                    name="dense")(x)


# ----------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------

def _pair(pred, target, what: str):
  """Squeezes a trailing unit axis of `pred` to match a [B] target; refuses broadcasting."""
  pred = jnp.asarray(pred)
  target = jnp.asarray(target)
  if pred.ndim == target.ndim + 1 and pred.shape[-1] == 1:
    pred = pred[..., 0]
  elif target.ndim == pred.ndim + 1 and target.shape[-1] == 1:
    target = target[..., 0]
  if pred.shape != target.shape:
    hint = ""
    if what == "labels" and target.ndim >= 2 and target.shape[-1] >= 2:
      hint = " (one-hot labels with a one-unit head? pass the 0/1 label of the signal class, [B])"
    raise ValueError(f"output shape {tuple(pred.shape)} does not match {what} shape "
                     f"{tuple(target.shape)}{hint}")
  return pred.astype(jnp.float32), target.astype(jnp.float32)


def binary_cross_entropy_with_logits(logits, labels, label_smoothing: float = 0.0):
  """Mean sigmoid BCE. logits [B] or [B, 1]; labels [B] (int/bool/float 0/1) or [B, 1].

  With label smoothing e the target is y (1 - e) + e / 2. Computed stably as
  max(x, 0) - x y + log(1 + exp(-|x|)).
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise UsageError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  x, y = _pair(logits, labels, "labels")
  if label_smoothing:
    y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
  return jnp.mean(jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x))))


def mse(pred, target):
  """Mean squared error; pred [B] / [B, 1] / [B, K] against target of the same or [B]."""
  p, t = _pair(pred, target, "target")
  return jnp.mean((p - t) ** 2)


def huber(pred, target, delta: float = 1.0):
  """Mean Huber loss: 0.5 d^2 if |d| <= delta else delta (|d| - delta / 2) (optax convention)."""
  if delta <= 0:
    raise ValueError(f"delta must be positive, got {delta}")
  p, t = _pair(pred, target, "target")
  a = jnp.abs(p - t)
  quad = jnp.minimum(a, delta)
  return jnp.mean(0.5 * quad ** 2 + delta * (a - quad))
