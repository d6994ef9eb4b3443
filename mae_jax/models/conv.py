"""Grouped convolutions of the hybrid MAEs, written so that XLA:CPU runs them fast.

Two flax modules with the parameters of the `nn.Conv` they replace (same names, shapes,
initialisation), so checkpoints and exports do not depend on which path ran:

  `PatchGroupedConv`  kernel = stride = p, `feature_group_count` = C input channels
                      (DepthwiseMAE's per-channel patch embedding).
  `DepthwiseConv`     k x k depthwise conv, stride 1, SAME padding (ConvMAE's masked
                      conv blocks).

`impl`: "auto" (the direct paths on CPU, lax's conv elsewhere), "lax" or "direct".

Why: XLA:CPU lowers grouped convolutions, and above all their weight gradients, to slow
generic loops. Measured on the 2-core CPU (fwd + bwd, batch 32, float32): the 5x5 stride-5
patch embedding of 125x125x8 images with 18 filters per channel 0.454 s as a grouped conv,
0.034 s as the reshape + einsum below; the 5x5 depthwise conv on [32, 125, 125, 8] 0.40 s
as a grouped conv, 0.07 s as 25 shifted multiply-adds with the backward written out
(`depthwise_conv_same`). On other backends both use `lax.conv_general_dilated`, which is
also the reference the tests compare against (tests/test_conv.py); the timings come from
`python benchmarks/grouped_conv.py`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes
from jax import lax

Dtype = Any


# LayerNorm eps of the per-pixel norms in the conv stem and ConvMAE's conv stages. Most
# pixels of a jet image are empty, so their features are the zero vector (or one constant
# vector), where LayerNorm's Jacobian is scale/sqrt(eps): 1000x per norm at the ViT's 1e-6.
# Stacked over the conv stages this gave step-1 gradient norms of 2e17 (ConvMAE tiny), inf
# (ConvMAE e2e-base) and 4e3 (conv-stem tiny) against the ViT's 0.5. eps = 1 caps the gain
# at |scale| and still normalises features whose channel variance is >> 1; the step-1
# gradient norms then match the ViT's (docs/models.md, tests/test_hybrid.py). ImageNet
# ConvMAE keeps 1e-6: natural images have no exactly-empty regions.
SPARSE_LN_EPS = 1.0

IMPLS = ("auto", "lax", "direct")  # direct: written out in XLA ops (einsum / shifted sums)


def _use_lax(impl: str) -> bool:
  if impl not in IMPLS:
    raise ValueError(f"conv impl {impl!r}; choose one of {IMPLS}")
  return impl == "lax" or (impl == "auto" and jax.default_backend() != "cpu")


def _acc(dtype):
  """Accumulation dtype: at least float32 (bfloat16 inputs), float64 stays float64."""
  return jnp.promote_types(dtype, jnp.float32)


def patch_grouped_conv(x, kernel, impl: str = "auto"):
  """[B, H, W, C] * kernel [p, p, 1, C*k] (kernel = stride = p, C groups) -> [B, H/p, W/p, C*k].

  Output channel g*k + j sees input channel g only, as `nn.Conv(..., feature_group_count=C)`.
  """
  p, c = kernel.shape[0], x.shape[-1]
  if kernel.shape[:3] != (p, p, 1) or kernel.shape[3] % c:
    raise ValueError(f"kernel {kernel.shape} is not [p, p, 1, C*k] for {c} input channels")
  if x.shape[1] % p or x.shape[2] % p:
    raise ValueError(f"patch {p} does not divide the image size {x.shape[1]}x{x.shape[2]}")
  if _use_lax(impl):
    return lax.conv_general_dilated(x, kernel, (p, p), "VALID", feature_group_count=c,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  b, h, w, _ = x.shape
  k = kernel.shape[3] // c
  patches = x.reshape(b, h // p, p, w // p, p, c)
  out = jnp.einsum("bhpwqc,pqck->bhwck", patches, kernel.reshape(p, p, c, k))
  return out.reshape(b, h // p, w // p, c * k)


def _shifted_sum(xp, kernel, h, w):
  """sum_{i,j} xp[:, i:i+h, j:j+w, :] * kernel[i, j, 0] (at least float32 accumulation)."""
  k, acc = kernel.shape[0], _acc(xp.dtype)
  out = None
  for i in range(k):
    for j in range(k):
      t = xp[:, i:i + h, j:j + w, :].astype(acc) * kernel[i, j, 0].astype(acc)
      out = t if out is None else out + t
  return out


def _pad(x, p):
  return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


@jax.custom_vjp
def _depthwise_shifts(x, kernel):
  p = (kernel.shape[0] - 1) // 2
  return _shifted_sum(_pad(x, p), kernel, x.shape[1], x.shape[2]).astype(x.dtype)


def _depthwise_fwd(x, kernel):
  return _depthwise_shifts(x, kernel), (x, kernel)


def _depthwise_bwd(res, g):
  x, kernel = res
  k = kernel.shape[0]
  p, h, w = (k - 1) // 2, x.shape[1], x.shape[2]
  # d/dx: correlation of the padded cotangent with the flipped kernel (also 25 fused adds)
  dx = _shifted_sum(_pad(g, p), kernel[::-1, ::-1], h, w).astype(x.dtype)
  # d/dkernel[i, j]: one reduction per tap (XLA fuses each slice * g into its reduction)
  xp, acc = _pad(x, p), _acc(x.dtype)
  taps = [jnp.sum(xp[:, i:i + h, j:j + w, :].astype(acc) * g.astype(acc), axis=(0, 1, 2))
          for i in range(k) for j in range(k)]
  dk = jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)
  return dx, dk


_depthwise_shifts.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv_same(x, kernel, impl: str = "auto"):
  """[B, H, W, D] * kernel [k, k, 1, D], stride 1, SAME padding -> [B, H, W, D].

  The direct path needs an odd k (symmetric padding); even k always takes lax's conv.
  """
  k, d = kernel.shape[0], x.shape[-1]
  if kernel.shape != (k, k, 1, d):
    raise ValueError(f"kernel {kernel.shape} is not [k, k, 1, {d}]")
  if impl == "direct" and k % 2 == 0:
    raise ValueError(f"the direct depthwise conv needs an odd kernel, got {k}; use impl='lax'")
  if _use_lax(impl) or k % 2 == 0:
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", feature_group_count=d,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return _depthwise_shifts(x, kernel)


def prime_factors(n: int) -> list[int]:
  """Prime factors in decreasing order: 5 -> [5], 25 -> [5, 5], 16 -> [2, 2, 2, 2]."""
  out, f = [], 2
  while n > 1 and f * f <= n:
    while n % f == 0:
      out.append(f)
      n //= f
    f += 1
  if n > 1:
    out.append(n)
  return sorted(out, reverse=True)


def conv_init():
  # fan-in over the whole kernel, as PyTorch / MAE's xavier on the flattened view.
  return nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1)


class _GroupedConvBase(nn.Module):
  """kernel [k, k, 1, features] and bias [features], as nn.Conv with groups = in channels."""
  features: int
  kernel_size: int
  dtype: Dtype = jnp.float32
  impl: str = "auto"

  def params_for(self, x):
    kernel = self.param("kernel", conv_init(), (self.kernel_size, self.kernel_size, 1,
                                                self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)


class PatchGroupedConv(_GroupedConvBase):
  """`nn.Conv(features, (p, p), strides=p, padding="VALID", feature_group_count=C)`."""

  @nn.compact
  def __call__(self, x):
    x, kernel, bias = self.params_for(x)
    return patch_grouped_conv(x, kernel, self.impl) + bias


class DepthwiseConv(_GroupedConvBase):
  """`nn.Conv(D, (k, k), padding="SAME", feature_group_count=D)`."""

  @nn.compact
  def __call__(self, x):
    x, kernel, bias = self.params_for(x)
    return depthwise_conv_same(x, kernel, self.impl) + bias
