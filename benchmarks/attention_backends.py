r"""The attention backends against each other: cuDNN vs XLA, bfloat16 and float32.

  python benchmarks/attention_backends.py [--batch 256] [--repeats 10]

At the e2e-base encoder and decoder shapes (and with key padding, as the sparse
MAE runs it), each (backend, dtype) runs forward + backward on the same inputs;
the table gives the largest absolute difference of the output and of dq/dk/dv
from the float32 XLA result (relative to that result's largest magnitude) and
the median time. A backend that refuses a dtype (cuDNN's fused attention takes
bfloat16/float16 only) is listed with its reason. Runs anywhere; on a CPU the
cuDNN rows say why they did not run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.models import attention

# [B, T, heads, head_dim] of e2e-base: encoder 1 + 157 visible tokens, decoder 626 tokens.
SHAPES = {"encoder": (158, 12, 64), "decoder": (626, 8, 16)}


def fwd_bwd(impl, lengths=None):
  def loss(q, k, v, do):
    return jnp.sum(attention.dot_product_attention(q, k, v, impl=impl, lengths=lengths) * do)

  def run(q, k, v, do):
    o = attention.dot_product_attention(q, k, v, impl=impl, lengths=lengths)
    return (o,) + jax.grad(loss, argnums=(0, 1, 2))(q, k, v, do.astype(o.dtype))
  return jax.jit(run)


def median_seconds(fn, args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def rel_err(got, want):
  got, want = (np.asarray(x, np.float32) for x in (got, want))
  return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def compare(batch, repeats, padded):
  rows = []
  for name, (t, h, d) in SHAPES.items():
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, do = (jax.random.normal(key, (batch, t, h, d), jnp.float32) for key in keys)
    lengths = (jnp.arange(batch) % t) // 2 + t // 2 if padded else None
    ref = fwd_bwd("xla", lengths)(q, k, v, do)
    for dtype in ("bfloat16", "float32"):
      args = [x.astype(dtype) for x in (q, k, v, do)]
      for impl in ("xla", "cudnn"):
        label = f"{name}{' padded' if padded else ''} [{batch},{t},{h},{d}] {dtype} {impl}"
        try:
          fn = fwd_bwd(impl, lengths)
          got = fn(*args)
          errs = [rel_err(g, r) for g, r in zip(got, ref)]
          sec = median_seconds(fn, args, repeats)
          rows.append(f"| {label} | {errs[0]:.1e} | {max(errs[1:]):.1e} | {sec * 1e3:.2f} |")
        except Exception as e:  # noqa: BLE001  (a refusal is a result here)
          reason = str(e).strip().splitlines()[0][:110]
          rows.append(f"| {label} | refused: {type(e).__name__}: {reason} | | |")
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--repeats", type=int, default=10)
  args = p.parse_args(argv)
  dev = jax.devices()[0]
  print(f"attention backends on {dev.platform} {dev.device_kind}, jax {jax.__version__}; "
        "errors relative to float32 XLA, max |x - ref| / max |ref|")
  print("| case | output error | max dq/dk/dv error | fwd+bwd ms |")
  print("|---|---|---|---|")
  for padded in (False, True):
    for row in compare(args.batch, args.repeats, padded):
      print(row, flush=True)


if __name__ == "__main__":
  main()
