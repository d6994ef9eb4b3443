"""One lever's validation scores across pretraining budgets and pools (issue 26's budget
sweep), each row compared with the row above it on the same validation jets (paired
bootstrap). Rows are sorted by steps, then by the order given.

  python benchmarks/budget_table.py --lever pred_zeros \
      workdirs/levers workdirs/levers1500 workdirs/levers5000

Each directory is a `benchmarks/levers.py --out` (its scores.npz and levers.json: the steps).
Prints a markdown table; the random-encoder control is the first directory's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

KEYS = (("probe_100", "probe AUC, 100 labels"), ("probe_1000", "probe AUC, 1,000 labels"),
        ("obs_encoder_trees", "trees on obs. + encoder"))


def load(out, lever):
  path = os.path.join(out, "scores.npz")
  if not os.path.exists(path):
    raise SystemExit(f"budget_table: {path} is missing: rerun benchmarks/levers.py --out {out}")
  with open(os.path.join(out, "levers.json")) as f:
    meta = json.load(f)
  z = np.load(path)
  if f"{lever}/probe_100" not in z:
    raise SystemExit(f"budget_table: {out} has no lever {lever!r} (it has "
                     f"{sorted({k.split('/')[0] for k in z.files if '/' in k})})")
  with open(os.path.join(out, lever, "seed0", "pretrain", "config.json")) as f:
    meta["pool"] = os.path.basename(os.path.normpath(json.load(f)["data"]["dir"]))
  return meta, z


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--lever", default="pred_zeros")
  p.add_argument("dirs", nargs="+")
  a = p.parse_args(argv)
  from mae_jax.evaluate import metrics
  from mae_jax.protocol import verdict
  runs = [load(d, a.lever) for d in a.dirs]
  y = runs[0][1]["y"]
  for d, (_, z) in zip(a.dirs, runs):
    if not np.array_equal(z["y"], y):
      raise SystemExit(f"budget_table: {d} was scored on other validation jets")
  runs.sort(key=lambda r: r[0]["steps"])
  lines = ["| pretraining steps | pool | " + " | ".join(name for _, name in KEYS) + " | pretrain s |",
           "|---" * (len(KEYS) + 3) + "|"]
  z0 = runs[0][1]
  lines.append("| 0 (random encoder) | – | " + " | ".join(
      f"{metrics.roc_auc(y, z0[f'random encoder/{k}']):.4f}" for k, _ in KEYS) + " | 0 |")
  prev = None
  for meta, z in runs:
    cells = []
    for k, _ in KEYS:
      s = z[f"{a.lever}/{k}"]
      cell = f"{metrics.roc_auc(y, s):.4f}"
      if prev is not None:
        d, sd = verdict.paired_auc_difference(y, s, prev[f"{a.lever}/{k}"])
        cell += f" ({d:+.4f} = {d / sd:+.1f}σ)" if sd > 0 else f" ({d:+.4f})"
      cells.append(cell)
    secs = meta["levers"][a.lever].get("pretrain_seconds", float("nan"))
    lines.append(f"| {meta['steps']} | {meta['pool']} | " + " | ".join(cells)
                 + f" | {secs:.0f} |")
    prev = z
  print(f"Lever {a.lever}, validation split ({len(y)} jets); in brackets: the difference to "
        "the row above, in units of its paired bootstrap std.\n")
  print("\n".join(lines))
  print(f"\nCommand: python benchmarks/budget_table.py {' '.join(sys.argv[1:] if argv is None else argv)}")


if __name__ == "__main__":
  main()
