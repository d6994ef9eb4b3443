"""`python -m mae_jax.simulation`: the command line of `mae_jax.simulation.writer.generate`."""

from __future__ import annotations

import argparse

from mae_jax.errors import UsageError
from mae_jax.simulation import events, writer


def parse_split(text: str) -> tuple:
  """`--split` "0.8,0.1,0.1" as floats (`writer.check_args` checks them)."""
  try:
    return tuple(float(p) for p in text.replace(" ", "").split(","))
  except ValueError:
    raise UsageError(f"--split must be three comma-separated numbers, got {text!r}") from None


def main(argv=None):
  ap = argparse.ArgumentParser(
      prog="python -m mae_jax.simulation",
      description="Generate E2E-style jet images (125x125x8) with Pythia 8 + FastJet into HDF5.",
  )
  ap.add_argument("--process", required=True, help=f"one of {sorted(events.PROCESSES)}")
  ap.add_argument("--num", required=True, type=int, help="number of jets (classes balanced 50/50)")
  ap.add_argument("--output", required=True, help="output HDF5 file")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--workers", type=int, default=1, help="worker processes")
  ap.add_argument("--split", default="0.8,0.1,0.1",
                  help="train,validation,test fractions (sum to 1)")
  ap.add_argument("--compression", default="gzip", choices=["gzip", "lzf"])
  ap.add_argument("--no-progress", action="store_true", help="no progress bar or summary line")
  args = ap.parse_args(argv)
  try:
    split = parse_split(args.split)
    writer.check_args(args.process, args.num, split, args.workers, args.seed)
  except ValueError as e:
    ap.error(str(e))
  summary = writer.generate(
      args.process,
      args.num,
      args.output,
      seed=args.seed,
      workers=args.workers,
      split=split,
      progress=not args.no_progress,
      compression=args.compression,
  )
  if args.no_progress:
    print(f"{summary['jets_per_second']:.2f} jets/s")
  return summary


if __name__ == "__main__":
  main()
