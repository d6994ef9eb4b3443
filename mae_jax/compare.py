r"""ViT MAE vs hybrid Conv+ViT MAEs on equal terms: one table.

  python -m mae_jax.compare --data data_cache/boosted_top_3000_tfds --root workdirs/compare \
      --models mae,depthwise_mae,convstem_mae,convmae --variant tiny --seeds 0 \
      --steps pretrain=200,probe=50,finetune=50 --config.batch_size=32 --pretrain.lr=5e-3

Every model runs the same protocol stages (pretrain -> reconstruction -> probe -> finetune) on
the same dataset and splits, with the same budget in steps and batch. Sizes: each family's
variant of the same name; at `e2e-base` they are matched to the ViT's parameter count within
0.5% (docs/models.md), at `tiny` they differ (the table shows each count). FLOPs per image come from XLA's cost analysis of the jitted train step,
images/s from timing it (median of a few steps, synthetic sparse batch). Writes
ROOT/comparison.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from mae_jax import bench, protocol


def train_speed(model_name, variant, patch, image_shape, batch, steps=3):
  config = protocol.load_stage_config("pretrain", variant, model_name, patch)
  config.batch_size, config.total_steps, config.warmup_steps = batch, 1000, 10
  _, times, flops, _ = bench.measure_train_step(config, image_shape, steps)
  return flops / batch / 1e9, batch / statistics.median(times)


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  passthrough = [a for a in argv if a.startswith("--config.")
                 or any(a.startswith(f"--{s}.") for s in protocol.STAGES)]
  rest = [a for a in argv if a not in passthrough]
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", required=True)
  p.add_argument("--root", required=True)
  p.add_argument("--models", default="mae,depthwise_mae,convstem_mae,convmae")
  p.add_argument("--variant", default="tiny")
  p.add_argument("--patch", type=int, default=5)
  p.add_argument("--seeds", default="0")
  p.add_argument("--steps", default="pretrain=200,probe=50,finetune=50")
  p.add_argument("--speed-batch", type=int, default=32)
  args = p.parse_args(rest)

  rows = []
  for name in args.models.split(","):
    root = os.path.join(args.root, name)
    protocol.main(["--data", args.data, "--root", root, "--variant", args.variant,
                   "--model", name, "--patch", str(args.patch), "--seeds", args.seeds,
                   "--steps", args.steps, "--stages", "pretrain,probe,finetune", *passthrough])
    with open(os.path.join(root, "results.json")) as f:
      res = json.load(f)
    from mae_jax.data import pipeline as pipeline_lib
    image_shape = tuple(pipeline_lib.load_meta(args.data)["image_shape"])
    gflop, ips = train_speed(name, args.variant, args.patch, image_shape, args.speed_batch)
    seeds = res["per_seed"]

    def col(stage, key):
      return [s[stage].get(key) for s in seeds if stage in s]

    rows.append({"model": name, "params": seeds[0]["params"], "gflop": gflop, "ips": ips,
                 "lp_acc": col("probe", "test/accuracy"), "lp_auc": col("probe", "test/auc"),
                 "ft_acc": col("finetune", "test/accuracy"), "ft_auc": col("finetune", "test/auc"),
                 "recon": [s["recon"]["test"]["mse_masked"] for s in seeds if "recon" in s],
                 "recon_zero": [s["recon"]["test"]["mse_masked_zeros"] for s in seeds if "recon" in s]})

  lines = ["# ViT MAE vs hybrid MAEs", "",
           f"Data `{args.data}`, variant `{args.variant}` of each family (parameter counts in "
           f"the table), patch {args.patch}, steps {args.steps}, seeds {args.seeds}. Command: "
           f"`python -m mae_jax.compare {' '.join(argv)}`. Classification on the test split "
           "(checkpoint selected on validation); reconstruction MSE over masked patches of the "
           "test split, next to predicting empty patches. Speed: jitted train step, batch "
           f"{args.speed_batch}, this machine.", "",
           "| model | params | GFLOP/image (train) | train images/s | recon MSE test | predict-zeros "
           "| LP acc | LP AUC | FT acc | FT AUC |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['params']:,} | {r['gflop']:.2f} | {r['ips']:.1f} "
                 f"| {protocol.fmt(r['recon'], 5)} | {protocol.fmt(r['recon_zero'], 5)} "
                 f"| {protocol.fmt(r['lp_acc'])} | {protocol.fmt(r['lp_auc'])} "
                 f"| {protocol.fmt(r['ft_acc'])} | {protocol.fmt(r['ft_auc'])} |")
  os.makedirs(args.root, exist_ok=True)
  with open(os.path.join(args.root, "comparison.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  return rows


if __name__ == "__main__":
  main()
