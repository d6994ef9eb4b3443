r"""ViT MAE vs hybrid Conv+ViT MAEs on equal terms: one table.

  python -m mae_jax.compare --data data_cache/boosted_top_3000_tfds --root workdirs/compare \
      --models mae,depthwise_mae,convstem_mae,convmae --variant tiny --seeds 0 \
      --steps pretrain=200,probe=50,finetune=50 --config.batch_size=32 --pretrain.lr=5e-3

Every model runs the same protocol stages on the same dataset and splits, with the same
budget in steps and batch, for every seed: pretrain -> reconstruction -> probe -> finetune,
and two controls of the same model without pretraining: `probe_random` (the probe on the
randomly initialised, frozen encoder: what the probe gets without pretraining) and
`scratch` (the finetune model and budget from random initialisation: what pretraining adds
to supervised training). `--select STAGE.FIELD=V1,V2` (e.g. finetune.lr=1e-3,4e-3) gives
every model the same grid, chosen per model and seed on the validation split. Sizes:
each family's variant of the same name; at `e2e-base` and `tiny` every family has the ViT's
trainable parameter count within 0.5% (matched parameters, not matched
compute: the FLOPs column shows what each spends; docs/models.md). FLOPs per image come from XLA's cost analysis
of the jitted train step (attention lowered as XLA ops), images/s from timing it (median of a
few steps, synthetic sparse batch). Scores are mean ± std over seeds. Writes
ROOT/comparison.md and ROOT/comparison.png. `launch/compare.sh` runs it on 10,000 generated
jets with the settings of the table in docs/models.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from mae_jax import bench, protocol
from mae_jax.errors import UsageError


def parse_model(spec: str):
  """'mae' -> ('mae', 'dense'); 'mae:sparse' -> ('mae', 'sparse') (the sparse-token mode)."""
  name, _, tokens = spec.partition(":")
  tokens = tokens or "dense"
  if tokens not in ("dense", "sparse"):
    raise UsageError(f"--models {spec!r}: tokens must be dense or sparse")
  return name, tokens


def train_speed(model_name, variant, patch, image_shape, batch, steps=10, tokens="dense",
                data=""):
  """(training GFLOP per image, images/s): median of `steps` timed steps after one warm-up.

  Ten, not three: in a fresh process ConvMAE tiny had one or two steps of 4.5-5 s among
  steps of 0.95 s (the allocator growing the heap for its full-resolution stage), and a
  median of three reported 6.9 images/s instead of 34."""
  config = protocol.load_stage_config("pretrain", variant, model_name, patch, tokens)
  config.batch_size, config.total_steps, config.warmup_steps = batch, 1000, 10
  config.data.dir = data
  times = bench.measure_train_step(config, image_shape, steps)[1]
  return bench.model_flops(config, image_shape) / batch / 1e9, batch / statistics.median(times)


def figure(rows, out_path):
  """Probe / finetune AUC and reconstruction skill per model, seed mean with std error bars."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  def stats(values):
    v = [x for x in values if x is not None]
    return (np.mean(v), np.std(v, ddof=1) if len(v) > 1 else 0.0) if v else (np.nan, 0.0)

  names = [r["model"] for r in rows]
  x = np.arange(len(rows))
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  bars = [(k, label) for k, label in (("lp_auc", "linear probe"),
                                      ("lp_random_auc", "probe, random encoder"),
                                      ("ft_auc", "finetune"), ("scratch_auc", "scratch"))
          if any(v is not None for r in rows for v in r[k])]
  width = 0.8 / len(bars)
  for i, (key, label) in enumerate(bars):
    m, s = zip(*(stats(r[key]) for r in rows))
    axes[0].bar(x + (i - (len(bars) - 1) / 2) * width, m, width, yerr=s, capsize=2, label=label)
  axes[0].set_ylabel("test AUC")
  axes[0].set_ylim(0.5, 1.0)
  axes[0].legend(fontsize=7, loc="upper right")
  skill = [stats([1 - a / b for a, b in zip(r["recon"], r["recon_zero"])]) for r in rows]
  axes[1].bar(x, [m for m, _ in skill], 0.5, yerr=[s for _, s in skill], capsize=3)
  axes[1].axhline(0, color="k", lw=0.8)
  axes[1].set_ylabel("recon skill, 1 - MSE / MSE(predict zeros)")
  for ax in axes:
    ax.set_xticks(x, names, rotation=15, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)
  plt.close(fig)


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
  p.add_argument("--stages", default="pretrain,probe,finetune,probe_random,scratch",
                 help="protocol stages; pretrain, probe and finetune are needed for the table")
  p.add_argument("--select", action="append", default=[], metavar="STAGE.FIELD=V1,V2",
                 help="same grid for every model, chosen on the validation split (protocol --select)")
  p.add_argument("--recon-splits", default="test",
                 help="splits of the reconstruction report (the table shows test)")
  p.add_argument("--speed-batch", type=int, default=32)
  args = p.parse_args(rest)
  missing = {"pretrain", "probe", "finetune"} - set(args.stages.split(","))
  if missing:
    raise UsageError(f"--stages {args.stages!r} lacks {sorted(missing)}, which the table needs")
  if "test" not in args.recon_splits.split(","):
    raise UsageError(f"--recon-splits {args.recon_splits!r} lacks test, which the table shows")
  selects = [a for item in args.select for a in ("--select", item)]

  rows = []
  for spec in args.models.split(","):
    name, tokens = parse_model(spec)
    root = os.path.join(args.root, spec.replace(":", "_"))
    protocol.main(["--data", args.data, "--root", root, "--variant", args.variant,
                   "--model", name, "--tokens", tokens, "--patch", str(args.patch),
                   "--seeds", args.seeds, "--steps", args.steps, "--stages", args.stages,
                   "--recon-splits", args.recon_splits, *selects, *passthrough])
    with open(os.path.join(root, "results.json")) as f:
      res = json.load(f)
    from mae_jax.data import meta as meta_lib
    image_shape = tuple(meta_lib.load_meta(args.data)["image_shape"])
    gflop, ips = train_speed(name, args.variant, args.patch, image_shape, args.speed_batch,
                             tokens=tokens, data=args.data)
    seeds = res["per_seed"]

    def col(stage, key):
      return [s["by_labelled"]["all"][stage].get(key) for s in seeds
              if stage in s["by_labelled"]["all"]]

    rows.append({"model": spec, "params": seeds[0]["params"], "gflop": gflop, "ips": ips,
                 "lp_acc": col("probe", "test/accuracy"), "lp_auc": col("probe", "test/auc"),
                 "lp_random_auc": col("probe_random", "test/auc"),
                 "ft_acc": col("finetune", "test/accuracy"), "ft_auc": col("finetune", "test/auc"),
                 "scratch_auc": col("scratch", "test/auc"),
                 "selected": {st: [s[st]["selected"] for s in seeds if "selected" in s.get(st, {})]
                              for st in protocol.STAGES},
                 "recon": [s["recon"]["test"]["mse_masked"] for s in seeds if "recon" in s],
                 "recon_zero": [s["recon"]["test"]["mse_masked_zeros"] for s in seeds
                                if "recon" in s],
                 "occ_skill": [s["recon"]["test"]["skill_occupied"] for s in seeds if "recon" in s]})

  lines = ["# ViT MAE vs hybrid MAEs", "",
           f"Data `{args.data}`, variant `{args.variant}` of each family (trainable parameters "
           f"in the table), patch {args.patch}, steps {args.steps}, seeds {args.seeds} "
           "(mean ± std over seeds). Command: "
           f"`python -m mae_jax.compare {' '.join(argv)}`. Classification on the test split "
           "(checkpoint selected on validation); reconstruction MSE over masked patches of the "
           "test split, next to predicting empty patches. Speed: jitted train step, batch "
           f"{args.speed_batch}, this machine.", "",
           "| model | params | GFLOP/image (train) | train images/s | recon MSE test | predict-zeros "
           "| LP acc | LP AUC | LP AUC, random encoder | FT acc | FT AUC | scratch AUC |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['params']:,} | {r['gflop']:.2f} | {r['ips']:.1f} "
                 f"| {protocol.fmt(r['recon'], 5)} | {protocol.fmt(r['recon_zero'], 5)} "
                 f"| {protocol.fmt(r['lp_acc'])} | {protocol.fmt(r['lp_auc'])} "
                 f"| {protocol.fmt(r['lp_random_auc'])} "
                 f"| {protocol.fmt(r['ft_acc'])} | {protocol.fmt(r['ft_auc'])} "
                 f"| {protocol.fmt(r['scratch_auc'])} |")
  chosen = [f"{r['model']} {st}: {protocol.format_selected(cs)}"
            for r in rows for st, cs in r["selected"].items() if cs]
  if chosen:
    lines += ["", "Chosen on the validation split (per seed): " + "; ".join(chosen) + "."]
  os.makedirs(args.root, exist_ok=True)
  figure(rows, os.path.join(args.root, "comparison.png"))
  lines += ["", "![probe, finetune, reconstruction](comparison.png)"]
  with open(os.path.join(args.root, "comparison.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  return rows


if __name__ == "__main__":
  from mae_jax import errors
  sys.exit(errors.run_cli(main))
