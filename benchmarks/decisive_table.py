r"""The decisive experiment's headline tables from everything finished under one protocol root.

  python benchmarks/decisive_table.py workdirs/decisive_z1500 [--seeds 0,1] \
      [--sizes 100,300,1000,3000,all] [--versus workdirs/decisive_small]

A protocol run's report covers the seeds, sizes and stages of that one command; the
headline mixes several (every size for seed 0, ResNet-15 at some sizes, a second seed at
others). This reads each finished stage's `final_metrics.json` and `test_scores.npz` in
ROOT/seed{S}/n{N}/{stage} (ROOT/seed{S}/{stage} for 'all') and prints two markdown tables:
test AUC per size and stage (mean over the seeds that ran it, ± their sample std with 2+
seeds, else ± the bootstrap std) and the comparisons the verdict rests on, each in units of
its uncertainty (paired bootstrap on the same test jets, or the seeds' standard error if
larger; within 2σ a tie: `protocol.verdict`).

`--versus OTHER_ROOT` (another run of the protocol on the same labelled set, e.g. a larger
model): a third table with each stage that ran under both roots, OTHER minus ROOT, paired on
the same test jets, for the seeds and sizes given.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from mae_jax.protocol import stages as stages_lib
from mae_jax.protocol import verdict

PRETRAINED = ("probe", "finetune")
# (a, b, what the difference says); b may be the strongest control at that size
COMPARISONS = (
    ("probe", "probe_random", "what pretraining put in the frozen features"),
    ("finetune", "scratch", "finetune vs the same model from scratch"),
    ("best pretrained", stages_lib.STRONGEST, "best pretrained − strongest control (goal ≥ +3σ)"),
    ("observables_encoder", "observables_gbt", "does the encoder add information to the trees?"),
)


def load(root, seeds, sizes):
  """per_seed records as the protocol builds them, from the finished stages on disk."""
  per_seed = []
  for seed in seeds:
    res = {"seed": seed, "by_labelled": {}, "workdirs": {}}
    for size in sizes:
      key = stages_lib.size_key(size)
      res["by_labelled"][key] = {}
      for stage in stages_lib.CLASSIFY_STAGES:
        workdir = stages_lib.run_dir(root, seed, None if key == "all" else int(key), stage)
        path = os.path.join(workdir, "final_metrics.json")
        if os.path.exists(path):
          with open(path) as f:
            final = json.load(f)
          if final.get("test/auc") is not None:
            res["by_labelled"][key][stage] = final
            res["workdirs"][f"{stage}@{key}"] = workdir
    per_seed.append(res)
  if not any(r["by_labelled"][k] for r in per_seed for k in r["by_labelled"]):
    raise SystemExit(f"decisive_table: no finished classification stage under {root} for "
                     f"seeds {seeds} and sizes {sizes}")
  return per_seed


def auc_cell(per_seed, stage, key):
  vals = [r["by_labelled"][key][stage] for r in per_seed if stage in r["by_labelled"][key]]
  if not vals:
    return "–"
  aucs = [v["test/auc"] for v in vals]
  spread = np.std(aucs, ddof=1) if len(aucs) > 1 else vals[0].get("test/auc_std") or 0.0
  seeds = f" ({len(aucs)} seeds)" if len(aucs) > 1 else ""
  return f"{np.mean(aucs):.4f} ± {spread:.4f}{seeds}"


def comparison_cell(per_seed, a, b, size):
  if a == "best pretrained":
    ran = [(verdict.mean_auc(per_seed, s, size), s) for s in PRETRAINED]
    ran = [x for x in ran if x[0] is not None]
    if not ran:
      return "–"
    a = max(ran)[1]
  if b == stages_lib.STRONGEST:
    b = verdict.strongest_control(per_seed, size)
  c = verdict.compare(per_seed, a, b, size) if b else None
  return "–" if c is None else f"{a} − {b}: {difference(c)}"


def difference(c):
  """'+0.0123 = +3.1σ (above, 2 seeds)' for a `verdict.compare` result."""
  seeds = f", {c['n_seeds']} seeds" if c["n_seeds"] > 1 else ""
  if c["sigma"] == 0:  # e.g. the same control fitted twice: identical scores, no spread
    return f"{c['diff']:+.4f} ({verdict.call(c)}{seeds})"
  return f"{c['diff']:+.4f} = {c['diff'] / c['sigma']:+.1f}σ ({verdict.call(c)}{seeds})"


def versus_rows(per_seed, other, sizes):
  """Rows 'stage: OTHER − ROOT' for every stage both roots finished at some size: the two
  runs' records merged into one per seed (OTHER's stages renamed 'versus:STAGE') so that
  `verdict.compare` pairs them on the same test jets like any two stages."""
  merged = []
  for res, res_o in zip(per_seed, other):
    m = {"seed": res["seed"], "by_labelled": {}, "workdirs": dict(res["workdirs"])}
    for key, stages in res["by_labelled"].items():
      m["by_labelled"][key] = dict(stages)
      for stage, final in res_o["by_labelled"].get(key, {}).items():
        m["by_labelled"][key][f"versus:{stage}"] = final
    for name, workdir in res_o["workdirs"].items():
      m["workdirs"][f"versus:{name}"] = workdir
    merged.append(m)
  rows = []
  for stage in stages_lib.CLASSIFY_STAGES:
    found = [verdict.compare(merged, f"versus:{stage}", stage, s) for s in sizes]
    if any(c is not None for c in found):
      rows.append((stage, ["–" if c is None else difference(c) for c in found]))
  return rows


def print_table(title, keys, rows):
  """A markdown table: one column per labelled-set size, a row per (name, cells)."""
  print(f"| {title} | " + " | ".join(f"{k} labelled" for k in keys) + " |")
  print("|---" * (len(keys) + 1) + "|")
  for name, cells in rows:
    print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("root")
  p.add_argument("--seeds", default="0")
  p.add_argument("--sizes", default="100,300,1000,3000,all")
  p.add_argument("--versus", default="", metavar="OTHER_ROOT",
                 help="another protocol root on the same labelled set: OTHER − ROOT per stage")
  a = p.parse_args(argv)
  for root in (a.root, a.versus):
    if root and not os.path.isdir(root):
      raise SystemExit(f"decisive_table: {root} is not a directory")
  try:
    seeds = [int(s) for s in a.seeds.split(",")]
    sizes = [s if s == "all" else int(s) for s in a.sizes.split(",")]
  except ValueError:
    raise SystemExit(f"decisive_table: --seeds {a.seeds!r} / --sizes {a.sizes!r}: integers "
                     "(sizes may include 'all')")
  per_seed = load(a.root, seeds, sizes)
  keys = [stages_lib.size_key(s) for s in sizes]
  stages = [s for s in stages_lib.CLASSIFY_STAGES
            if any(s in r["by_labelled"][k] for r in per_seed for k in keys)]
  print_table("stage", keys, [(stage, [auc_cell(per_seed, stage, k) for k in keys])
                              for stage in stages])
  print()
  print_table("comparison", keys, [(what, [comparison_cell(per_seed, x, y, s) for s in sizes])
                                   for x, y, what in COMPARISONS])
  if a.versus:
    print()
    print_table(f"stage: {a.versus} − {a.root}", keys,
                versus_rows(per_seed, load(a.versus, seeds, sizes), sizes))


if __name__ == "__main__":
  main()
