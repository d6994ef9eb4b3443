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


def torch_step_time(model, image_shape, batch, steps, images_nhwc):
  """transformers' ViTMAEForPreTraining with the same sizes: median train-step seconds.

  forward + backward + AdamW step at the same batch, float32, on the CPU threads
  torch picks (all cores), same images and a fresh masking noise each step.
  """
  import torch
  import transformers

  from mae_jax import export
  config = export.vitmae_config(model, image_shape)
  net = transformers.ViTMAEForPreTraining(config).train()
  opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
  x = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())

  def step():
    opt.zero_grad(set_to_none=True)
    out = net(pixel_values=x)
    out.loss.backward()
    opt.step()

  step()  # warm-up
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), torch.get_num_threads()


def matmul_ceiling(n=2048, dtype="float32", repeats=5):
  """GFLOP/s of a large jitted matmul: the machine's practical ceiling for utilisation."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n**3 / statistics.median(times) / 1e9


def measure_train_step(config, image_shape, steps):
  """(compile seconds, step times, FLOPs per step, model) of the trainer's own jitted step."""
  from mae_jax import parallel, trainer
  mesh = parallel.make_mesh(config.mesh)
  model = trainer.build_model(config, image_shape)
  state, shardings, tx, schedule = trainer.create_state(config, model, mesh, image_shape)
  step = trainer.make_train_step(config, model, tx, schedule, mesh, shardings)
  images = parallel.global_batch(
      {"image": sparse_batch(config.batch_size, image_shape[0], image_shape[-1])}, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, images).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  state, m = step(state, images)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = step(state, images)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return compile_s, times, flops, model


def pipeline_rate(data_dir, batch, batches=20, normalization="log1p"):
  """Images/s of the tf.data input pipeline alone (decode + normalise + batch), no model."""
  from mae_jax.data import pipeline as pipeline_lib
  pipe = pipeline_lib.Pipeline(data_dir, normalization)
  it = pipe.train_iter("train", batch, seed=0, shuffle_buffer=1000)
  next(it)  # warm-up: opens files, fills the shuffle buffer
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - t0)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variants", default="tiny,e2e-base")
  p.add_argument("--batch", default="32", help="comma-separated batch sizes")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--torch", action="store_true",
                 help="also time transformers' ViTMAEForPreTraining (PyTorch) with the same sizes")
  p.add_argument("--data", default="", help="converted dataset: also time the input pipeline")
  args = p.parse_args(argv)
  ceiling = matmul_ceiling(dtype="bfloat16" if args.dtype == "bfloat16" else "float32")
  print(f"matmul ceiling ({args.dtype}, 2048^3, jitted): {ceiling:.1f} GFLOP/s", flush=True)

  import importlib.util
  import os

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
      image_shape = (125, 125, 8)
      compile_s, times, flops, model = measure_train_step(config, image_shape, args.steps)
      med = statistics.median(times)
      torch_s, threads = (float("nan"), 0)
      if args.torch:
        torch_s, threads = torch_step_time(model, image_shape, batch, args.steps,
                                           sparse_batch(batch))
      rows.append((variant, batch, compile_s, med, batch / med, flops / batch / 1e9,
                   flops / med / 1e9, 100 * flops / med / 1e9 / ceiling, torch_s,
                   torch_s / med))
      print(f"{variant:10s} batch {batch:4d}: compile {compile_s:6.1f} s, step {med:7.3f} s, "
            f"{batch / med:8.1f} img/s, {flops / batch / 1e9:6.2f} GFLOP/img, "
            f"{flops / med / 1e9:6.1f} GFLOP/s; PyTorch ViTMAE step {torch_s:.3f} s "
            f"({threads} threads), speed ratio mae_jax/PyTorch {torch_s / med:.2f}", flush=True)
  if args.data:
    for batch in sorted({r[1] for r in rows}):
      rate = pipeline_rate(args.data, batch)
      need = max(r[4] for r in rows if r[1] == batch)
      print(f"input pipeline {args.data}, batch {batch}: {rate:.0f} images/s, "
            f"{rate / need:.1f}x what the fastest step above consumes ({need:.1f} images/s)")
  print(f"\nbackend {jax.default_backend()}, {jax.device_count()} device(s), "
        f"jax {jax.__version__}, dtype {args.dtype}, median of {args.steps} steps")
  print(f"matmul ceiling {ceiling:.1f} GFLOP/s")
  print("| variant | batch | compile s | step s | images/s | GFLOP/image | GFLOP/s | utilisation "
        "| PyTorch step s | mae_jax / PyTorch speed |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.3f} | {r[4]:.1f} | {r[5]:.2f} | {r[6]:.1f} "
          f"| {r[7]:.0f}% | {r[8]:.3f} | {r[9]:.2f}× |")


if __name__ == "__main__":
  main()
