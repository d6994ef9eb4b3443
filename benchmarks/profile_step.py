"""Where the pretraining step's time goes on this machine: the trainer's own jitted step
(mae_jax.bench's set-up, real jets for sparse tokens) run under `jax.profiler.trace`, the
XLA CPU thunks' events summed per op and grouped by what the op does, read from the
compiled HLO (a fusion counts as its most expensive kind of instruction).

  python benchmarks/profile_step.py --variant e2e-base --tokens sparse --batch 32 \
      --data data_cache/boosted_top_pool6000_seed3_tfds [--steps 4] [--top 15]

Sparse tokens: one batch of the median bucket length (of 16 real batches) is traced `--steps`
times, so every op name belongs to one compiled program. Prints two markdown tables: time per step by category (thread-seconds summed over XLA's
worker threads, so the total can exceed the step's wall time on several cores) and the
most expensive ops. Categories, in the order a fusion is assigned (first match wins):
  matmul          dot / convolution (XNNPACK "ynn" fusions included)
  attention       the fused CPU attention kernel (custom call; other custom calls: "custom")
  scatter         scatter (tokens back to the patch grid, gradient of a gather)
  gather          gather / dynamic-slice (visible tokens, position embeddings)
  sort            sort (the random masking's argsort)
  reduce          reductions (layer norm, softmax, losses, optimizer norms)
  copy/transpose  copy, transpose, concatenate, pad, slice
  elementwise     the rest (adds, multiplies, exp, the optimizer update)
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import statistics
import tempfile
import time

import jax

ORDER = ("matmul", "attention", "custom", "scatter", "gather", "sort", "reduce",
         "copy/transpose", "elementwise", "not in the HLO")
# control flow: their trace events enclose their bodies' ops, which are counted themselves
WRAPPERS = {"while", "call", "conditional"}
OPS = (("matmul", ("dot", "convolution")), ("attention", ("attention",)), ("custom", ("custom",)),
       ("scatter", ("scatter",)), ("gather", ("gather", "dynamic-slice")), ("sort", ("sort",)),
       ("reduce", ("reduce", "reduce-window")),
       ("copy/transpose", ("copy", "transpose", "concatenate", "pad", "slice",
                           "dynamic-update-slice")))
# waits and the executor's own spans (they enclose the ops) are not op time
IGNORE = ("ThreadpoolListener", "end: ", "SlinkyThreadPool", "Await", "ThunkExecutor")


def hlo_kinds(hlo_text: str) -> dict:
  """{instruction or fusion name: set of HLO opcodes it runs} from optimised HLO text."""
  comps, current = {}, None
  inst = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S.*?\s([a-z][\w\-]*)\(")
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and "=" not in line.split("{")[0]:
      current = head.group(1)
      comps[current] = []
      continue
    m = inst.match(line)
    if m and current is not None:
      called = re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", line)
      op = m.group(2)
      if op == "custom-call":  # the attention kernel's FFI target names it
        target = re.search(r'custom_call_target="([^"]+)"', line)
        op = "attention" if target and "attention" in target.group(1) else "custom"
      comps[current].append((m.group(1), op, called))
  kinds = {}

  def opcodes(comp, seen=()):
    out = set()
    for _, op, called in comps.get(comp, []):
      out.add(op)
      for c in called:
        if c not in seen:
          out |= opcodes(c, seen + (comp,))
    return out

  for comp, insts in comps.items():
    for name, op, called in insts:
      ops = {op}
      for c in called:
        ops |= opcodes(c)
      kinds[name] = ops
  return kinds


def category(name: str, kinds: dict) -> str:
  ops = kinds.get(name)
  if ops is None:  # XNNPACK fusions carry their own names; anything else is reported as such
    return "matmul" if name.startswith("ynn") else "not in the HLO"
  for cat, members in OPS:
    if ops & set(members):
      return cat
  return "elementwise"


def profile(variant, tokens, batch, data, steps, dtype="float32", attention="auto"):
  from mae_jax import bench
  from jax.profiler import ProfileData
  config = bench._pretrain_config(variant, batch, dtype, attention, tokens, data)
  batches = bench.real_batches(config, 16) if tokens == "sparse" else None
  _, state, step, images = bench.train_step_setup(config, (125, 125, 8)
                                                   if not data else _shape(data), batches)
  lengths = [g.get("patch_ids", g["image"]).shape[-1] for g in images]
  batch_ = images[sorted(range(len(images)), key=lengths.__getitem__)[len(images) // 2]]
  kinds = hlo_kinds(step.lower(state, batch_).compile().as_text())
  state, m = step(state, batch_)  # compile (and warm up) the one program traced
  jax.block_until_ready(m)
  out = tempfile.mkdtemp()
  walls = []
  with jax.profiler.trace(out):
    for i in range(steps):
      t0 = time.perf_counter()
      state, m = step(state, batch_)
      jax.block_until_ready(m)
      walls.append(time.perf_counter() - t0)
  data_ = ProfileData.from_file(glob.glob(out + "/**/*.xplane.pb", recursive=True)[0])
  per_op = collections.Counter()
  for plane in data_.planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue
      for e in line.events:
        if any(e.name.startswith(s) for s in IGNORE) or kinds.get(e.name, set()) & WRAPPERS:
          continue
        per_op[e.name] += e.duration_ns / 1e9 / steps
  if not per_op:
    raise SystemExit("profile_step: the trace holds no XLA:CPU op events (threads tf_XLA*); "
                     "this jax version names them differently")
  return per_op, kinds, statistics.median(walls), int(batch_.get("patch_ids",
                                                                  batch_["image"]).shape[1])


def _shape(data):
  from mae_jax.data import meta as meta_lib
  return tuple(meta_lib.load_meta(data)["image_shape"])


def tables(per_op, kinds, wall, top):
  by_cat = collections.Counter()
  for name, s in per_op.items():
    by_cat[category(name, kinds)] += s
  total = sum(by_cat.values())
  lines = [f"step wall time {wall:.3f} s (median); XLA thread time {total:.3f} s per step",
           "", "| category | thread-s per step | share |", "|---|---|---|"]
  lines += [f"| {c} | {by_cat[c]:.3f} | {100 * by_cat[c] / total:.1f}% |" for c in ORDER
            if by_cat[c]]
  lines += ["", "| op | category | thread-s per step | share |", "|---|---|---|---|"]
  lines += [f"| {n} | {category(n, kinds)} | {s:.4f} | {100 * s / total:.1f}% |"
            for n, s in per_op.most_common(top)]
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variant", default="e2e-base")
  p.add_argument("--tokens", default="sparse", choices=("dense", "sparse"))
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--data", default="")
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--attention", default="auto")
  p.add_argument("--top", type=int, default=15)
  a = p.parse_args(argv)
  per_op, kinds, wall, length = profile(a.variant, a.tokens, a.batch, a.data, a.steps,
                                        a.dtype, a.attention)
  print(f"{a.variant} {a.tokens} batch {a.batch} {a.dtype} attention={a.attention}, "
        f"{a.steps} traced steps, {jax.device_count()} device(s)"
        + (f", {length} token slots per jet" if a.tokens == "sparse" else ""))
  print(tables(per_op, kinds, wall, a.top))


if __name__ == "__main__":
  main()
