"""Grouped convolutions of the hybrid MAEs: lax's grouped conv vs models/conv.py (not a test).

Times forward and forward + backward (gradients for input and kernel) of the shapes the
tiny hybrids run at batch 32 on 125x125x8 images, median of `--steps` after one warm-up::

    python benchmarks/grouped_conv.py [--batch 32] [--steps 7]

Prints one table: shape, path (lax | direct), forward s, forward + backward s.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.bench import time_fn
from mae_jax.models import conv


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=7)
  args = p.parse_args()
  b = args.batch
  rng = np.random.default_rng(0)
  cases = [  # (label, op, input shape, kernel shape)
      ("DepthwiseMAE tiny patch embed", conv.patch_grouped_conv, (b, 125, 125, 8), (5, 5, 1, 144)),
      ("ConvMAE tiny stage-1 dwconv", conv.depthwise_conv_same, (b, 125, 125, 8), (5, 5, 1, 8)),
      ("ConvMAE tiny stage-2 dwconv", conv.depthwise_conv_same, (b, 25, 25, 40), (5, 5, 1, 40)),
  ]
  print(f"backend {jax.default_backend()}, float32, median of {args.steps}")
  print("| op | input | kernel | path | forward s | forward + backward s |")
  print("|---|---|---|---|---|---|")
  for label, op, xs, ks in cases:
    x = jnp.asarray(rng.normal(size=xs) * (rng.random(xs) < 0.05), jnp.float32)
    k = jnp.asarray(rng.normal(size=ks), jnp.float32)
    for impl in ("lax", "direct"):
      fwd = jax.jit(lambda x, k, impl=impl, op=op: op(x, k, impl))
      grad = jax.jit(jax.grad(lambda x, k, impl=impl, op=op: jnp.sum(jnp.sin(op(x, k, impl))),
                              argnums=(0, 1)))
      print(f"| {label} | {xs} | {ks} | {impl} | {time_fn(fwd, x, k, repeats=args.steps):.4f} "
            f"| {time_fn(grad, x, k, repeats=args.steps):.4f} |", flush=True)


if __name__ == "__main__":
  main()
