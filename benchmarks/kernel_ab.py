r"""The CPU attention kernel at a git revision against the working tree's, alternating.

  python benchmarks/kernel_ab.py [--rev HEAD~1] [--lengths 25,97,626] [--rounds 2] [--torch]

Each round times attention alone, [32, T, 8, 16] float32 (the e2e-base decoder's heads),
forward and forward + backward (`mae_jax.bench.attention_times`), first with the kernel
source of `--rev` (written to a temporary file: the kernel cache is keyed by the source,
so both builds are kept apart), then with the working tree's, each in a fresh process.
Alternating rounds in one run is how a change to the kernel is judged on a machine whose
speed drifts by ±10% between runs. Prints one line per (round, source, length), in ms.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = "mae_jax/kernels/cpu_attention.cc"

CHILD = r"""
import sys
import mae_jax.kernels.cpu_attention as ca
if sys.argv[1]:
  ca.SOURCE = sys.argv[1]
from mae_jax import bench
for t in map(int, sys.argv[2].split(",")):
  r = bench.attention_times(shape=(32, t, 8, 16), with_torch=sys.argv[3] == "1")
  print(t, " ".join(f"{k} {f * 1e3:.1f} / {fb * 1e3:.1f}" for k, (f, fb) in r.items()),
        flush=True)
"""


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rev", default="HEAD~1", help="git revision of the kernel to compare with")
  p.add_argument("--lengths", default="25,97,626", help="key lengths T, comma-separated")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--torch", action="store_true", help="also time PyTorch's SDPA (first round)")
  args = p.parse_args(argv)
  try:
    if not all(int(t) > 0 for t in args.lengths.split(",")):
      raise ValueError
  except ValueError:
    raise SystemExit(f"--lengths {args.lengths!r}: give positive integers, e.g. 25,97,626")
  show = subprocess.run(["git", "show", f"{args.rev}:{KERNEL}"], cwd=ROOT,
                        capture_output=True, text=True)
  if show.returncode:
    raise SystemExit(f"--rev {args.rev!r}: git show failed: {show.stderr.strip()}")
  with tempfile.TemporaryDirectory() as tmp:
    old = os.path.join(tmp, "cpu_attention.cc")
    with open(old, "w") as f:
      f.write(show.stdout)
    for round_ in range(args.rounds):
      for label, source in ((args.rev, old), ("working tree", "")):
        torch = "1" if args.torch and round_ == 0 and not source else "0"
        out = subprocess.run([sys.executable, "-c", CHILD, source, args.lengths, torch],
                             cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
          raise SystemExit(f"{label}: the timing process failed:\n{out.stderr[-3000:]}")
        for line in out.stdout.splitlines():
          print(f"round {round_ + 1} {label:>12s}: T={line}", flush=True)


if __name__ == "__main__":
  main()
