"""One rate-distortion table and figure from `compression` runs at several latent budgets.

Reads the final_metrics.json of each run (a protocol root, its seed*/compression workdir,
or the file), written by `python -m mae_jax.protocol --stages compression` (launch/
compression.sh runs one per budget), and writes::

    python benchmarks/compression_budgets.py --out DIR ROOT_4x8 ROOT_16x8 ROOT_32x16

DIR/compression_budgets.md: one row per budget of the compressive MAE (bytes per jet with
the latent's in brackets, jet-mass and jet-pT response / resolution / 68% half-width, the
observable trees' AUC on the decoded jets and its paired difference from the originals',
what it misses of issue 27's goal), then the storage baselines of the first run;
DIR/compression_budgets.png: bytes per jet against the jet-mass resolution and against the
tree AUC, the MAE budgets as a line, the baselines as points. The table is also printed.
"""

from __future__ import annotations

import argparse
import os

from mae_jax.evaluate import compression, plots


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("runs", nargs="+", help="protocol roots / compression workdirs / "
                 "final_metrics.json files, one per budget")
  p.add_argument("--out", required=True, help="directory for compression_budgets.md / .png")
  args = p.parse_args(argv)
  finals = compression.load_budgets(args.runs)
  table = compression.budget_table(finals)
  os.makedirs(args.out, exist_ok=True)
  md = os.path.join(args.out, "compression_budgets.md")
  png = os.path.join(args.out, "compression_budgets.png")
  mae, base = compression.budget_rows(finals)
  orig = (finals[0].get("trees") or {}).get("original") or {}
  plots.rate_distortion_budgets(mae, base, png, orig.get("auc"), compression.GOAL)
  with open(md, "w") as f:
    f.write("# Rate–distortion of the compressive MAE at several latent budgets\n\n"
            + "Runs: " + ", ".join(fi["path"] for fi in finals) + "\n\n" + table
            + "\n\n![rate-distortion](compression_budgets.png)\n")
  print(table)
  print(f"[compression_budgets] wrote {md} and {png}")
  return md, png


if __name__ == "__main__":
  main()
