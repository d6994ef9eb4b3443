r"""Train-step benchmark: compile time, median step time, images/s, FLOPs.

  python -m mae_jax.bench --variants tiny,e2e-base --batch 32 --steps 5

Uses the trainer's own state creation and jitted step on synthetic sparse
125x125x8 images (no input pipeline), one process, all local devices in a
("data",) mesh. Prints one table; numbers are medians over `--steps` timed
steps after one warm-up (compile) step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np


def sparse_batch(batch, hw=125, channels=8, seed=0):
  rng = np.random.default_rng(seed)
  x = np.zeros((batch, hw, hw, channels), np.float32)
  hit = rng.random(x.shape) < 0.02
  x[hit] = rng.exponential(1.0, int(hit.sum()))
  return x


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variants", default="tiny,e2e-base")
  p.add_argument("--batch", default="32", help="comma-separated batch sizes")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", default="float32")
  args = p.parse_args(argv)

  import importlib.util
  import os
  from mae_jax import parallel, trainer

  spec = importlib.util.spec_from_file_location(
      "pretrain", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "pretrain.py"))
  cfg_mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cfg_mod)

  rows = []
  for variant in args.variants.split(","):
    for batch in [int(b) for b in args.batch.split(",")]:
      config = cfg_mod.get_config(f"variant={variant}")
      config.batch_size, config.total_steps, config.warmup_steps = batch, 1000, 10
      config.model.dtype = args.dtype
      mesh = parallel.make_mesh(config.mesh)
      image_shape = (125, 125, 8)
      model = trainer.build_model(config, image_shape)
      state, shardings, tx, schedule = trainer.create_state(config, model, mesh, image_shape)
      step = trainer.make_train_step(config, model, tx, schedule, mesh, shardings)
      images = parallel.global_batch({"image": sparse_batch(batch)}, mesh)
      t0 = time.perf_counter()
      compiled = step.lower(state, images).compile()
      compile_s = time.perf_counter() - t0
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
      state, m = step(state, images)
      jax.block_until_ready(m)
      times = []
      for _ in range(args.steps):
        t0 = time.perf_counter()
        state, m = step(state, images)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
      med = statistics.median(times)
      rows.append((variant, batch, compile_s, med, batch / med, flops / batch / 1e9,
                   flops / med / 1e9))
      print(f"{variant:10s} batch {batch:4d}: compile {compile_s:6.1f} s, step {med:7.3f} s, "
            f"{batch / med:8.1f} img/s, {flops / batch / 1e9:6.2f} GFLOP/img, "
            f"{flops / med / 1e9:6.1f} GFLOP/s", flush=True)
  print(f"\nbackend {jax.default_backend()}, {jax.device_count()} device(s), "
        f"jax {jax.__version__}, dtype {args.dtype}, median of {args.steps} steps")
  print("| variant | batch | compile s | step s | images/s | GFLOP/image | GFLOP/s |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.3f} | {r[4]:.1f} | {r[5]:.2f} | {r[6]:.1f} |")


if __name__ == "__main__":
  main()
