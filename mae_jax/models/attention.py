"""Softmax attention with a kernel chosen per backend (`model.attention` in configs).

  auto        CPU: the fused C++ kernel (kernels/cpu_attention.py) when it builds,
              else XLA. GPU: cuDNN's fused attention for bfloat16/float16 inputs
              when cuDNN accepts the shape, else XLA. Other backends: XLA.
  xla         `jax.nn.dot_product_attention(implementation="xla")` everywhere.
  cudnn       `jax.nn.dot_product_attention(implementation="cudnn")` (GPU only).
  cpu_kernel  the C++ kernel; an error if it cannot be built.

All compute softmax(q k^T / sqrt(head_dim)) v with the same parameters; they
differ by float round-off only (tests/test_attention.py states the tolerance).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

from mae_jax.errors import UsageError
from mae_jax.kernels import cpu_attention

IMPLS = ("auto", "xla", "cudnn", "cpu_kernel")


def check_impl(impl: str) -> str:
  if impl not in IMPLS:
    raise UsageError(f"model.attention={impl!r}; choose one of {IMPLS}")
  return impl


def resolve(impl: str, dtype) -> str:
  """The concrete implementation `impl` means for this backend and dtype."""
  check_impl(impl)
  if impl != "auto":
    return impl
  backend = jax.default_backend()
  if backend == "cpu" and cpu_attention.available():
    return "cpu_kernel"
  if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  return "xla"


def padding_mask(lengths, tq: int, tk: int):
  """[B, Tq] 1.0 for real query rows of a padded self-attention (see dot_product_attention)."""
  real = jnp.arange(tq)[None, :] < lengths[:, None]
  return jnp.where(lengths[:, None] >= tk, True, real)


def dot_product_attention(q, k, v, impl: str = "auto", lengths=None):
  """q [B, Tq, H, D], k/v [B, Tk, H, D] -> [B, Tq, H, D].

  `lengths` [B] int32 (optional) is a key-padding mask, the same for every backend:
  batch row b attends to its first lengths[b] keys (>= 1), and where that is fewer
  than Tk its query rows t >= lengths[b] are padding tokens whose output is 0.
  """
  choice = resolve(impl, q.dtype)
  if choice == "cpu_kernel":
    return cpu_attention.attention(q, k, v, lengths=lengths)
  kw = {}
  if lengths is not None:
    lengths = jnp.clip(lengths.astype(jnp.int32), 1, k.shape[1])
    kw = {"key_value_seq_lengths": lengths}
  out = None
  if choice == "cudnn":
    try:
      out = jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **kw)
    except (RuntimeError, ValueError, NotImplementedError) as e:
      if impl == "cudnn":
        raise
      logging.warning("cuDNN attention refused %s %s (%s); using XLA attention", q.shape,
                      q.dtype, e)
  if out is None:
    out = jax.nn.dot_product_attention(q, k, v, implementation="xla", **kw)
  if lengths is not None:
    out = out * padding_mask(lengths, q.shape[1], k.shape[1])[:, :, None, None].astype(out.dtype)
  return out
