r"""Train-step benchmark: compile time, median step time, images/s, FLOPs, PyTorch side by side.

  python -m mae_jax.bench --variants tiny,e2e-base --batch 32 --steps 5 --torch \
      [--attention] [--compile-cache] [--data DIR]

Uses the trainer's own state creation and jitted step on synthetic sparse
125x125x8 images (no input pipeline), one process, all local devices in a
("data",) mesh. Prints one table; numbers are medians over `--steps` timed
steps after one warm-up (compile) step.

FLOPs per image come from XLA's cost analysis of the same step lowered with
`model.attention="xla"` (XLA cannot count the FLOPs inside the fused CPU
attention kernel's custom call), so they are the model's FLOPs whatever kernel
ran. `--attention` times softmax attention alone at the e2e-base decoder shape
(XLA, the CPU kernel, PyTorch's SDPA); `--compile-cache` measures the first
step's compile time in fresh processes with an empty and a filled persistent
compilation cache; `--xla-flags 'default=;onednn=--xla_cpu_use_onednn=true'` measures
every row once per XLA flag set, each in its own process (XLA reads XLA_FLAGS once).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from mae_jax import errors
from mae_jax.errors import UsageError


def sparse_batch(batch, hw=125, channels=8, seed=0):
  rng = np.random.default_rng(seed)
  x = np.zeros((batch, hw, hw, channels), np.float32)
  hit = rng.random(x.shape) < 0.02
  x[hit] = rng.exponential(1.0, int(hit.sum()))
  return x


# Dense peak TFLOP/s per chip from the vendors' data sheets, by jax's device_kind (substring):
# bf16 without sparsity, and float32 matmuls as XLA runs them on these GPUs (TF32 tensor cores).
PEAK_TFLOPS = {
    "H100 PCIe": {"bfloat16": 756.0, "float32": 378.0},
    "H100": {"bfloat16": 989.0, "float32": 494.7},  # SXM (H100 80GB HBM3)
    "H200": {"bfloat16": 989.0, "float32": 494.7},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "L4": {"bfloat16": 121.0, "float32": 60.0},
}


def peak_tflops(device_kind: str, dtype: str):
  """(peak TFLOP/s, table key) of a known GPU, or (None, None)."""
  for name, peaks in PEAK_TFLOPS.items():  # the more specific names come first
    if name in device_kind:
      return peaks.get(dtype, peaks["float32"]), name
  return None, None


def torch_step_time(model, image_shape, batch, steps, images_nhwc, dtype="float32"):
  """transformers' ViTMAEForPreTraining with the same sizes: median train-step seconds.

  forward + backward + AdamW step at the same batch, on the GPU when torch sees one
  (bfloat16 autocast when `dtype` is bfloat16), else float32 on the CPU threads torch
  picks (all cores); same images and a fresh masking noise each step.
  """
  import contextlib

  import torch
  import transformers

  from mae_jax import export
  config = export.vitmae_config(model, image_shape)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  net = transformers.ViTMAEForPreTraining(config).train().to(dev)
  opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
  x = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy()).to(dev)
  amp = (torch.autocast(dev, dtype=torch.bfloat16) if dtype == "bfloat16" and dev == "cuda"
         else contextlib.nullcontext())

  def step():
    opt.zero_grad(set_to_none=True)
    with amp:
      out = net(pixel_values=x)
    out.loss.backward()
    opt.step()
    if dev == "cuda":
      torch.cuda.synchronize()

  return time_fn(step, repeats=steps), torch.get_num_threads()


def matmul_ceiling(n=2048, dtype="float32", repeats=5):
  """GFLOP/s of a large jitted matmul: the machine's practical ceiling for utilisation."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  return 2 * n**3 / time_fn(jax.jit(lambda x: x @ x), a, repeats=repeats) / 1e9


def real_batches(config, count=16):
  """`count` training batches of the run's input pipeline (sparse tokens: one sorted window,
  each batch padded to its bucket length, as in training)."""
  from mae_jax import experiment
  if not config.data.dir:
    raise UsageError("sparse tokens are timed on real jets (their occupancy decides the cost): "
                     "pass --data DIR, a converted dataset")
  it = experiment.make_pipeline(config).train_iter(config.data.train_split, config.batch_size,
                                                   seed=0, shuffle_buffer=2000)
  return [next(it) for _ in range(count)]


def token_stats(batches) -> dict:
  """Occupied patches per jet and the share of padded token slots in these batches."""
  n = np.concatenate([(b["patch_ids"] >= 0).sum(1) for b in batches])
  slots = sum(b["patch_ids"].size for b in batches)
  return {"mean": float(n.mean()), "median": float(np.median(n)),
          "p95": float(np.percentile(n, 95)), "max": int(n.max()),
          "lengths": sorted({int(b["patch_ids"].shape[1]) for b in batches}),
          "padding": 1.0 - float(n.sum()) / slots}


def train_step_setup(config, image_shape, batches=None):
  """(model, state, jitted step, global batches) exactly as the trainer builds them: the
  given host batches, or one synthetic sparse batch."""
  from mae_jax import experiment, parallel, tasks
  mesh = parallel.make_mesh(config.mesh)
  model = experiment.build_model(config, image_shape)
  setup = experiment.create_state(config, model, mesh, image_shape)
  state = setup.state
  step = experiment.make_train_step(config, model, tasks.build(config), setup, mesh)
  if batches is None:
    batches = [{"image": sparse_batch(config.batch_size, image_shape[0], image_shape[-1])}]
  return model, state, step, [parallel.global_batch(b, mesh) for b in batches]


def model_flops(config, image_shape):
  """FLOPs of one train step from XLA's cost analysis, attention lowered as XLA ops."""
  config = config.copy_and_resolve_references()
  config.model.attention = "xla"
  batches = real_batches(config, 16) if config.model.get("tokens") == "sparse" else None
  _, state, step, globals_ = train_step_setup(config, image_shape, batches)
  # sparse tokens: the FLOPs of the batch whose length is the median of the window's
  lengths = [g.get("patch_ids", g["image"]).shape[-1] for g in globals_]
  images = globals_[int(np.argsort(lengths)[len(lengths) // 2])]
  cost = step.lower(state, images).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def measure_train_step(config, image_shape, steps):
  """(compile seconds, step times, model, token statistics or None) of the trainer's own
  jitted step. Sparse tokens:
  16 real batches of one sorted window, every bucket length compiled first (compile_s is
  the first one's), then `steps` steps cycling through them."""
  batches = real_batches(config, 16) if config.model.get("tokens") == "sparse" else None
  model, state, step, images = train_step_setup(config, image_shape, batches)
  t0 = time.perf_counter()
  step.lower(state, images[0]).compile()
  compile_s = time.perf_counter() - t0
  for batch in images:  # warm-up: one compilation per length
    state, m = step(state, batch)
    jax.block_until_ready(m)
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    state, m = step(state, images[i % len(images)])
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return compile_s, times, model, (token_stats(batches) if batches is not None else None)


def compile_seconds_with_cache(variant, batch, attention):
  """First-step compile seconds in fresh processes: (empty cache, filled cache)."""
  with tempfile.TemporaryDirectory() as cache:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    out = []
    for _ in range(2):
      proc = subprocess.run(
          [sys.executable, "-m", "mae_jax.bench", "--compile-only", "--variants", variant,
           "--batch", str(batch), "--attention-impl", attention],
          env=env, capture_output=True, text=True, check=True)
      out.append(float(re.search(r"compile_s=([0-9.]+)", proc.stdout).group(1)))
    return tuple(out)


def time_fn(fn, *args, repeats=5):
  """Median seconds of fn(*args) after one warm-up call (JAX results waited for)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def attention_times(shape=(32, 626, 8, 16), with_torch=False):
  """Median seconds of softmax attention forward + backward per implementation."""
  from mae_jax.models import attention
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, do = (jax.random.normal(key, shape) for key in keys)
  out = {}
  impls = ["xla"] + (["cpu_kernel"] if jax.default_backend() == "cpu" else [])
  for impl in impls:
    def fwd_bwd(q, k, v, do, impl=impl):
      o, vjp = jax.vjp(lambda *a: attention.dot_product_attention(*a, impl=impl), q, k, v)
      return vjp(do)
    fwd = jax.jit(lambda q, k, v, impl=impl: attention.dot_product_attention(q, k, v, impl=impl))
    out[impl] = (time_fn(fwd, q, k, v), time_fn(jax.jit(fwd_bwd), q, k, v, do))
  if with_torch:
    import torch
    tq, tk, tv, tdo = (torch.from_numpy(np.asarray(x).transpose(0, 2, 1, 3).copy())
                       for x in (q, k, v, do))
    for t in (tq, tk, tv):
      t.requires_grad_(True)

    def t_fwd():
      with torch.no_grad():
        torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)

    def t_fwd_bwd():
      o = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
      torch.autograd.grad(o, (tq, tk, tv), tdo)

    out["torch_sdpa"] = (time_fn(t_fwd), time_fn(t_fwd_bwd))
  return out


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


def measure_row(args, variant, batch, image_shape, tokens="dense"):
  """Everything one table row needs, measured in this process."""
  config = _pretrain_config(variant, batch, args.dtype, args.attention_impl, tokens, args.data)
  compile_s, times, model, stats = measure_train_step(config, image_shape, args.steps)
  row = {"compile_s": compile_s, "step_s": statistics.median(times),
         "flops": model_flops(config, image_shape), "torch_s": float("nan"), "threads": 0,
         "cache_cold_s": float("nan"), "cache_warm_s": float("nan"), "tokens": stats}
  if args.torch:
    row["torch_s"], row["threads"] = torch_step_time(model, image_shape, batch, args.steps,
                                                     sparse_batch(batch), args.dtype)
  if args.compile_cache and tokens == "dense":
    row["cache_cold_s"], row["cache_warm_s"] = compile_seconds_with_cache(
        variant, batch, args.attention_impl)
  row["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  return row


def _pretrain_config(variant, batch, dtype, attention, tokens="dense", data=""):
  from mae_jax import config_util
  config = config_util.config_module("pretrain").get_config(f"variant={variant},tokens={tokens}")
  config.batch_size, config.total_steps, config.warmup_steps = batch, 1000, 10
  config.model.dtype, config.model.attention = dtype, attention
  config.data.dir = data
  return config


def parse_flag_sets(text: str) -> list[tuple[str, str]]:
  """`--xla-flags "default=;onednn=--xla_cpu_use_onednn=true"` -> [(label, XLA_FLAGS), ...]."""
  sets = []
  for item in (t.strip() for t in text.split(";")):
    label, sep, flags = item.partition("=")
    if not item or not sep or not label.strip() or any(
        f and not f.startswith("--") for f in flags.split()):
      raise UsageError(f"--xla-flags: {item!r} is not LABEL=FLAGS (e.g. "
                       "'default=;onednn=--xla_cpu_use_onednn=true'; FLAGS may be empty, "
                       "each flag starts with --)")
    sets.append((label.strip(), flags.strip()))
  if len({label for label, _ in sets}) != len(sets):
    raise UsageError(f"--xla-flags {text!r}: each label once")
  return sets


def run_row_in_process(args, variant, batch, tokens, xla_flags=None):
  """One row measured in a fresh process: memory one row's models leave behind (held by the
  allocator) cannot push a later row out of memory, and rows do not perturb each other.
  `xla_flags` (a string) is appended to XLA_FLAGS for that process (XLA reads it once)."""
  child = [sys.executable, "-m", "mae_jax.bench", "--one-row", "--variants", variant,
           "--batch", str(batch), "--steps", str(args.steps), "--dtype", args.dtype,
           "--attention-impl", args.attention_impl, "--tokens", tokens, "--data", args.data] + [
           f for f, on in (("--torch", args.torch), ("--compile-cache", args.compile_cache))
           if on]
  env = None
  if xla_flags is not None:
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()}
  proc = subprocess.run(child, capture_output=True, text=True, env=env)
  if proc.returncode:
    raise RuntimeError(f"benchmark row {variant} batch {batch} {tokens} "
                       f"(XLA_FLAGS {xla_flags!r}) failed "
                       f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.split("ROW ", 1)[1])


def main(argv=None):
  from mae_jax.models import attention
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variants", default="tiny,e2e-base")
  p.add_argument("--batch", default="32", help="comma-separated batch sizes (a sweep)")
  p.add_argument("--tokens", default="dense",
                 help="comma-separated: dense, sparse (sparse tokens need --data: real jets)")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--processes", type=int, default=1,
                 help="measure each row in this many fresh processes: min / median / max")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--attention-impl", default="auto",
                 choices=attention.IMPLS,
                 help="model.attention for the mae_jax step: auto | xla | cudnn | cpu_kernel")
  p.add_argument("--torch", action="store_true",
                 help="also time transformers' ViTMAEForPreTraining (PyTorch) with the same sizes")
  p.add_argument("--attention", action="store_true",
                 help="also time attention alone at the e2e-base decoder shape")
  p.add_argument("--attention-lengths", default="626",
                 help="key lengths for --attention, comma-separated (626: the dense e2e-base "
                      "decoder; ~25 / ~97: the sparse encoder / decoder on boosted-top jets)")
  p.add_argument("--compile-cache", action="store_true",
                 help="also measure compile time with an empty and a filled persistent cache")
  p.add_argument("--data", default="",
                 help="converted dataset: time the input pipeline; real jets for sparse tokens")
  p.add_argument("--xla-flags", default="", metavar="LABEL=FLAGS;...",
                 help="measure every row once per XLA flag set, each in a fresh process "
                      "with FLAGS appended to XLA_FLAGS, e.g. 'default=;onednn="
                      "--xla_cpu_use_onednn=true' (the table gets a column per set's label)")
  p.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--one-row", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  image_shape = (125, 125, 8)
  token_modes = [t for t in args.tokens.split(",") if t]
  if set(token_modes) - {"dense", "sparse"}:
    raise UsageError(f"--tokens {args.tokens!r}: choose from dense, sparse")
  if "sparse" in token_modes and not args.data:
    raise UsageError("--tokens sparse needs --data DIR: sparse steps are timed on real jets")
  try:
    lengths = [int(t) for t in args.attention_lengths.split(",") if t]
  except ValueError:
    lengths = []
  if not lengths or min(lengths) < 1:
    raise UsageError(f"--attention-lengths {args.attention_lengths!r}: give positive integers, "
                     "e.g. 25,97,626")
  flag_sets = parse_flag_sets(args.xla_flags) if args.xla_flags else [("", None)]
  if args.data:
    from mae_jax.data import meta as meta_lib
    image_shape = tuple(meta_lib.load_meta(args.data)["image_shape"])
  if args.compile_only:  # child of --compile-cache: one compile, one line
    config = _pretrain_config(args.variants, int(args.batch), args.dtype, args.attention_impl)
    compile_s = measure_train_step(config, image_shape, 0)[0]
    print(f"compile_s={compile_s:.3f}")
    return
  if args.one_row:  # child of a sweep: one (variant, batch, tokens) row as JSON
    print("ROW " + json.dumps(measure_row(args, args.variants, int(args.batch), image_shape,
                                          args.tokens)))
    return

  ceiling = matmul_ceiling(dtype="bfloat16" if args.dtype == "bfloat16" else "float32")
  print(f"matmul ceiling ({args.dtype}, 2048^3, jitted): {ceiling:.1f} GFLOP/s", flush=True)
  from mae_jax import cpu_env
  print(f"glibc malloc: {cpu_env.describe()}", flush=True)
  print(f"attention kernel: model.attention={args.attention_impl!r} -> "
        f"{attention.resolve(args.attention_impl, args.dtype)}", flush=True)

  grid = [(v, int(b), t, f) for v in args.variants.split(",") for b in args.batch.split(",")
          for t in token_modes for f in flag_sets]
  rows = []
  for variant, batch, tokens, (label, flags) in grid:
    if len(grid) == 1 and args.processes == 1 and flags is None:
      runs = [measure_row(args, variant, batch, image_shape, tokens)]
    else:
      runs = [run_row_in_process(args, variant, batch, tokens, flags)
              for _ in range(args.processes)]
    r = runs[0]
    steps_s = sorted(x["step_s"] for x in runs)
    r["step_s"] = statistics.median(steps_s)
    r["spread"] = (steps_s[0], steps_s[-1])
    r["torch_s"] = statistics.median(x["torch_s"] for x in runs)
    med, flops = r["step_s"], r["flops"]
    dense = next((x for x in rows if x["variant"] == variant and x["batch"] == batch
                  and x["tokens_mode"] == "dense" and x["xla_flags"] == label), None)
    rows.append({**r, "variant": variant, "batch": batch, "tokens_mode": tokens,
                 "xla_flags": label,
                 "vs_dense": dense["step_s"] / med if dense else float("nan")})
    extra = ""
    if r["tokens"]:
      t = r["tokens"]
      extra = (f"; occupied patches per jet mean {t['mean']:.0f}, median {t['median']:.0f}, "
               f"95% {t['p95']:.0f}, max {t['max']}; padded lengths {t['lengths']}, "
               f"padding {100 * t['padding']:.1f}% of token slots")
    print(f"{variant:10s} batch {batch:4d} {tokens:6s}"
          f"{f' XLA flags {label} ({flags})' if flags is not None else ''}: compile {r['compile_s']:6.1f} s, step "
          f"{med:7.3f} s (processes: min {r['spread'][0]:.3f}, max {r['spread'][1]:.3f}), "
          f"{batch / med:8.1f} img/s, {flops / batch / 1e9:6.2f} GFLOP/img; PyTorch ViTMAE step "
          f"{r['torch_s']:.3f} s ({r['threads']} threads), speed ratio mae_jax/PyTorch "
          f"{r['torch_s'] / med:.2f}; peak memory {r['peak_gib']:.1f} GiB{extra}", flush=True)
  if args.attention:
    for t in lengths:
      print(f"\nattention forward / forward+backward, [32, {t}, 8, 16] float32 "
            "(e2e-base heads):")
      for impl, (f, fb) in attention_times(shape=(32, t, 8, 16), with_torch=args.torch).items():
        print(f"  {impl:11s} {f:8.4f} s / {fb:8.4f} s")
  if args.data:
    for batch in sorted({r["batch"] for r in rows}):
      rate = pipeline_rate(args.data, batch)
      need = max(batch / r["step_s"] for r in rows if r["batch"] == batch)
      print(f"input pipeline {args.data}, batch {batch}: {rate:.0f} images/s, "
            f"{rate / need:.1f}x what the fastest step above consumes ({need:.1f} images/s)")
  print(f"\nbackend {jax.default_backend()}, {jax.device_count()} device(s), "
        f"jax {jax.__version__}, dtype {args.dtype}, attention {args.attention_impl}, "
        f"malloc {cpu_env.describe()}, median of {args.steps} steps, "
        f"{args.processes} process(es) per row")
  print(f"matmul ceiling {ceiling:.1f} GFLOP/s")
  peak, peak_name = peak_tflops(jax.devices()[0].device_kind, args.dtype)
  if peak:  # model FLOPs utilisation against the card's data-sheet peak
    for r in rows:
      tflops = r["flops"] / r["step_s"] / 1e12
      torch_tflops = r["flops"] / r["torch_s"] / 1e12
      print(f"MFU {r['variant']} batch {r['batch']} {r['tokens_mode']}: {tflops:.1f} TFLOP/s = "
            f"{100 * tflops / peak:.1f}% of the {peak_name} {args.dtype} dense peak {peak:g} "
            f"TFLOP/s ({jax.devices()[0].device_kind}); PyTorch ViTMAE "
            f"{100 * torch_tflops / peak:.1f}%")
  flag_col = bool(args.xla_flags)
  print("| variant | batch | tokens | " + ("XLA flags | " if flag_col else "") + "compile s | compile s, empty / filled cache | step s "
        "(min–max over processes) | images/s | GFLOP/image | GFLOP/s | utilisation "
        "| PyTorch step s | mae_jax / PyTorch speed | sparse / dense speed | peak host GiB |")
  print("|---|---|---|" + ("---|" if flag_col else "") + "---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    med, flops, b = r["step_s"], r["flops"], r["batch"]
    print(f"| {r['variant']} | {b} | {r['tokens_mode']} | "
          + (f"{r['xla_flags']} | " if flag_col else "") + f"{r['compile_s']:.1f} "
          f"| {r['cache_cold_s']:.1f} / {r['cache_warm_s']:.1f} | {med:.3f} "
          f"({r['spread'][0]:.3f}–{r['spread'][1]:.3f}) | {b / med:.1f} | {flops / b / 1e9:.2f} "
          f"| {flops / med / 1e9:.1f} | {100 * flops / med / 1e9 / ceiling:.0f}% "
          f"| {r['torch_s']:.3f} | {r['torch_s'] / med:.2f}× | {r['vs_dense']:.2f}× "
          f"| {r['peak_gib']:.1f} |")


def cli():
  """Entry point (`mae-jax-bench`): a wrong argument is one line, exit status 2."""
  return errors.run_cli(main)


if __name__ == "__main__":
  sys.exit(cli())
