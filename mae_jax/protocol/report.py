"""report.md: what the run shows, in words first, then the tables that say it, the caveats
the numbers need, and the figures."""

from __future__ import annotations

import json
import os

import numpy as np

from mae_jax.protocol import stages as stages_lib

LN2 = float(np.log(2.0))


def fmt(values, digits=4):
  """Mean ± sample std over seeds ('n/a' when nothing finite)."""
  vals = [v for v in values if v is not None and np.isfinite(v)]
  if not vals:
    return "n/a"
  if len(vals) == 1:
    return f"{vals[0]:.{digits}f}"
  return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def _mean_std(values):
  vals = [v for v in values if v is not None and np.isfinite(v)]
  if not vals:
    return None, None
  return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def score_caveats(stage, workdir, class_fraction):
  """Caveats from a classifier's test scores: (nearly) constant scores, accuracy at the
  class fraction (it has not trained)."""
  path = os.path.join(workdir, "test_scores.npz")
  if not os.path.exists(path):
    return []
  d = np.load(path)
  s, y = np.asarray(d["score"], np.float64), np.asarray(d["label"])
  out = []
  spread = float(np.std(s))
  if spread < 1e-3 * (1.0 + float(np.mean(np.abs(s)))):
    out.append(f"**{stage}**: its test scores are nearly constant (std {spread:.2g} around "
               f"{np.mean(s):.3g}): the classifier has not trained; its AUC ranks jets by "
               "noise-level differences. More steps or a higher lr.")
  side = np.mean(s > 0)
  if side in (0.0, 1.0) and len(s) > 1:
    out.append(f"**{stage}**: every test jet is on one side of the decision threshold, so "
               f"its accuracy is the class fraction ({class_fraction:.2f}) whatever its AUC.")
  elif abs(np.mean((s > 0) == (y > 0)) - max(class_fraction, 1 - class_fraction)) < 0.01:
    out.append(f"**{stage}**: accuracy equals the majority-class fraction: no better than "
               "always answering the same class.")
  return out


def headline(per_seed, size):
  """Sentences that say what the run shows (and where a control wins)."""
  size = stages_lib.size_key(size)

  def col(stage, key="test/auc"):
    return [s["by_labelled"][size].get(stage, {}).get(key) for s in per_seed]
  out = []
  rec = [s.get("recon", {}).get("test", {}).get("skill_masked") for s in per_seed]
  m, sd = _mean_std(rec)
  if m is not None:
    codes = per_seed[0].get("target") == "codes"  # pixels only through the codebook
    out.append(f"Reconstruction skill on the test split {fmt(rec, 3)} "
               + ("(code targets: of the argmax code's centroids) " if codes else "")
               + ("(better than predicting empty patches)." if m > 0 else
                  "— **worse than predicting empty patches**: the decoder has not learned "
                  "what masked patches hold; pretrain longer."))

  from mae_jax.protocol import verdict
  out += verdict.verdict_lines(per_seed, size)
  return out


def class_names(meta):
  """(background, signal) names from the dataset metadata (label 1 is the signal)."""
  names = meta.get("label_names") or []
  if len(names) >= 2:
    return str(names[0]), str(names[1])
  return "class 0", "class 1"


def write_report(root, args, per_seed, meta, pre_meta, timings, sizes, missing=()):
  """Writes ROOT/report.md and ROOT/results.json; returns the report's path. Sections are
  those of the stages that ran (their `kind`); `missing`: requested stages without results,
  named at the top."""
  from mae_jax.data import meta as meta_lib
  from mae_jax.evaluate import plots
  os.makedirs(root, exist_ok=True)
  h, w, c = meta["image_shape"]
  first = per_seed[0]
  main = sizes[-1]  # the largest labelled set (or all of the train split)
  width = first.get("feature_width", 0)
  raw = h * w * c * 4

  def col(stage, key, size=main):
    size = stages_lib.size_key(size)
    return [s["by_labelled"][size].get(stage, {}).get(key) for s in per_seed
            if stage in s["by_labelled"][size]]

  def recon(split, key):
    return [s.get("recon", {}).get(split, {}).get(key) for s in per_seed]

  n_train = meta["splits"].get("train", {}).get("num_examples", 0)
  labelled_txt = f"{main} labelled" if main else f"all {n_train}"
  lines = ["# mae_jax protocol report", ""]
  lines += ["## What this run shows", ""] + [f"- {s}" for s in headline(per_seed, main)] + [""]

  caveats = []
  if missing:
    caveats.append("**Incomplete run**: these requested stages have no results and are not in "
                   "the tables: " + ", ".join(missing) + ".")
  for split in ("validation", "test"):
    if split not in meta["splits"]:
      caveats.append(f"The dataset has no {split} split: "
                     + ("checkpoints are the last step, not selected on validation."
                        if split == "validation" else "there are no held-out test numbers."))
  if any(v is not None and v < 0 for v in recon("test", "skill_masked")):
    caveats.append("Reconstruction skill < 0: the MAE reconstructs masked patches worse than "
                   "a model that predicts empty patches (these images are a few % occupied). "
                   "Features of such an encoder are close to random ones.")
  counts = meta["splits"].get("test", {}).get("label_counts", {})
  frac = (int(counts.get("1", 0)) / max(sum(int(v) for v in counts.values()), 1)) if counts else 0.5
  for stage in stages_lib.CLASSIFY_STAGES:
    if stage not in first["by_labelled"][stages_lib.size_key(main)]:
      continue
    wd = first["workdirs"].get(f"{stage}@{stages_lib.size_key(main)}")
    if wd:
      caveats += score_caveats(stage, wd, frac)
  if caveats:
    lines += ["## Caveats", ""] + [f"- {c_}" for c_ in caveats] + [""]

  pre_data = args.pretrain_data
  lines += ["## Set-up", "",
            f"- Labelled data: `{args.data}` ({meta.get('format')}, image {h}×{w}×{c}; splits "
            + ", ".join(f"{k} {v['num_examples']}" for k, v in meta["splits"].items()) + ").",
            f"- Pretraining data: `{pre_data}` ("
            + ("the same dataset, labels ignored" if pre_data == args.data else
               "a separate dataset, labels ignored; splits " + ", ".join(
                   f"{k} {v['num_examples']}" for k, v in pre_meta["splits"].items()))
            + f"). Model `{args.model}/{args.variant}`, tokens `{args.tokens}`, "
            f"{first.get('params', 0):,} parameters, mask ratio {first.get('mask_ratio')}"
            + (f"; objective: cross-entropy on the masked tokens' codes in a k-means codebook "
               f"of {first.get('codebook_size')} codes (`task.target=codes`)"
               if first.get("target") == "codes" else "") + ".",
            f"- Downstream stages train on {labelled_txt} jets of the train split"
            + (" (class-balanced, seeded by the seed, nested across sizes)" if main else "")
            + ". Classification numbers are on the **test split**, evaluated once with the "
            "checkpoint selected on the validation split; AUC is exact over the whole split.",
            f"- Seeds: {args.seeds} (mean ± sample std over seeds where more than one). "
            f"Command: `python -m mae_jax.protocol {' '.join(args.argv)}`."]
  background, signal = class_names(meta)
  shown = [st for st in stages_lib.CLASSIFY_STAGES if col(st, "test/auc")]
  if shown:
    lines += ["", "## Classification (test split)", "",
              f"Signal: **{signal}** (label 1), background: **{background}** (label 0); "
              "rejection = 1 / background efficiency at the given signal efficiency.", "",
              "| stage | acc | AUC | rejection @50% sig. eff. | rejection @30% | selected step "
              "| selected on validation |", "|---|---|---|---|---|---|---|"]
  for stage in shown:
    chosen = stages_lib.format_selected(col(stage, "selected")) or "–"
    steps = ", ".join(str(s) for s in col(stage, "selected_step") if s is not None) or "–"
    lines.append(f"| {stage} | {fmt(col(stage, 'test/accuracy'))} | {fmt(col(stage, 'test/auc'))} "
                 f"| {fmt(col(stage, 'test/rejection_50'), 1)} "
                 f"| {fmt(col(stage, 'test/rejection_30'), 1)} | {steps} | {chosen} |")
  if shown:
    lines += [""] + [f"- {st}: {stages_lib.BY_NAME[st].describe}." for st in shown]
    lines += ["", "Bootstrap std of the first seed's test AUC: " + ", ".join(
        f"{st} ± {first['by_labelled'][stages_lib.size_key(main)].get(st, {}).get('test/auc_std') or float('nan'):.4f}"
        for st in shown) + "."]
  if shown and len(sizes) > 1:
    lines += ["", "## AUC against the number of labelled jets (test split)", "",
              "| labelled jets | " + " | ".join(shown) + " |",
              "|---|" + "---|" * len(shown)]
    for size in sizes:
      lines.append(f"| {size or 'all'} | "
                   + " | ".join(fmt(col(st, "test/auc", size)) for st in shown) + " |")
    lines += ["", "![AUC vs labelled jets](label_efficiency.png)"]
    plots.label_efficiency(per_seed, sizes, shown, os.path.join(root, "label_efficiency.png"))

  reg = [st for st in stages_lib.REGRESS_STAGES if col(st, "test/examples")]
  if reg:
    names = stages_lib.REGRESS_TARGETS.split(",")
    lines += ["", "## Regression (test split)", "",
              "MAE in GeV; resolution and bias relative (std and mean of (pred − true) / true).",
              "", "| stage | target | MAE (GeV) | resolution (rel. std) | bias (rel.) | R² |",
              "|---|---|---|---|---|---|"]
    for st in reg:
      for t in names:
        lines.append(f"| {st} | {t} | {fmt(col(st, f'test/{t}_mae'), 2)} "
                     f"| {fmt(col(st, f'test/{t}_resolution'), 3)} "
                     f"| {fmt(col(st, f'test/{t}_bias'), 2)} | {fmt(col(st, f'test/{t}_r2'), 3)} |")
    lines += [""] + [f"- {st}: {stages_lib.BY_NAME[st].describe}." for st in reg]

  if first.get("recon"):
    sparse = args.tokens == "sparse"
    lines += ["", "## Reconstruction (pretrained MAE, first seed)", "",
              "Masked patches are " + ("the masked **occupied** patches (the sparse-token MAE "
                                       "never predicts empty ones)" if sparse else
                                       "all masked patches, most of them empty")
              + f"; MSE in normalised units (`{first.get('normalization')}`); skill = 1 − MSE / "
              "MSE(predict zeros); 'occupied' = pixels with a non-zero true value inside "
              "masked patches (the same set for dense and sparse models).", "",
              "| split | MSE masked | predict-zeros | skill | MSE occupied | predict-zeros "
              "occupied | skill occupied | MSE empty | occupied fraction |",
              "|---|---|---|---|---|---|---|---|---|"]
    for split, r in first["recon"].items():
      # a measure can be undefined (None): e.g. no empty pixel once the normalisation
      # (log1p_zscore) moves zeros away from 0
      cell = lambda key, fmt: "–" if r.get(key) is None else format(r[key], fmt)
      lines.append(f"| {split} | {cell('mse_masked', '.5f')} | {cell('mse_masked_zeros', '.5f')} | "
                   f"{cell('skill_masked', '.3f')} | {cell('mse_occupied', '.5f')} | "
                   f"{cell('mse_occupied_zeros', '.5f')} | {cell('skill_occupied', '.3f')} | "
                   f"{cell('mse_empty', '.5f')} | {cell('occupied_fraction', '.4f')} |")
    ceiling = {sp: r for sp, r in first["recon"].items() if "codebook_skill_masked" in r}
    if ceiling:  # code targets: pixels only through the codebook
      lines += ["", "Code targets: the decoder predicts code logits, not pixels; the "
                "reconstruction above is the argmax code's centroid, so it cannot beat the "
                "codebook's own quantisation. The true codes' centroids reach skill "
                + ", ".join(f"{r['codebook_skill_masked']:.3f} masked / "
                            f"{r['codebook_skill_occupied']:.3f} occupied ({sp})"
                            for sp, r in ceiling.items()) + "."]
    names = meta.get("channel_names") or [f"ch{i}" for i in range(c)]
    r = first.get("recon_channels")
    if r:
      lines += ["", f"Per channel ({r['split']} split): MSE on masked patches; energy in masked "
                "patches, reconstructed / true (sum over jets) and per-jet relative error "
                "mean ± std; none for the signed impact-parameter channels (their sums are not "
                "energies). The sums are of the model's target pixels, in normalised units "
                f"(`{first.get('normalization')}`): ratios of energies in GeV only when that "
                "normalisation is a pure scale (none, div255); the ratios are "
                "dimensionless.", "",
                "| channel | MSE masked | predict-zeros | energy ratio | per-jet rel. error |",
                "|---|---|---|---|---|"]
      for i, n in enumerate(names):
        signed = meta_lib.is_signed_channel(meta, i)
        energy = ("– | –" if signed else
                  f"{r['energy_ratio'][i]:.3f} | {r['energy_rel_mean'][i]:+.3f} ± "
                  f"{r['energy_rel_std'][i]:.3f}")
        lines.append(f"| {n} | {r['mse_masked_per_channel'][i]:.5f} | "
                     f"{r['mse_masked_zeros_per_channel'][i]:.5f} | {energy} |")

  def score(stage, what):  # a measured number, or which stage would measure it
    vals = col(stage, "test/auc")
    return f"{what} AUC {fmt(vals)}" if vals else f"not measured ({stage} did not run)"
  lines += ["", "## Compression", "",
            "| representation | bytes per jet | ratio to raw | downstream score from it alone |",
            "|---|---|---|---|",
            f"| raw image float32 {h}×{w}×{c} | {raw:,} | 1× | {score('resnet', 'ResNet-15')} |"]
  if meta.get("stored_bytes_per_jet"):
    b = meta["stored_bytes_per_jet"]
    lines.append(f"| converted TFRecord (zlib, lossless) | {b:,.0f} | {raw / b:.0f}× "
                 f"| that of the raw image (lossless) |")
  if width:
    for dtype, nbytes in (("float32", 4), ("float16", 2)):
      lines.append(f"| encoder {first.get('pool', 'mean')}-pooled feature, {width} × {dtype} | "
                   f"{width * nbytes} | {raw / (width * nbytes):.0f}× | "
                   f"{score('probe', 'linear probe')} |")
    lines += ["", "(float16 features: the probe was trained on float32 features; the float16 "
              "row is storage only.)"]
  lines += compression_lines(root, first, main)
  lines += ["", "## Runtime of each stage (first seed, this machine; a stage chosen by --select: "
            "all its values together; a reused stage keeps the time it took when it ran)", "",
            "| stage | seconds |", "|---|---|"]
  for stage, sec in timings.items():
    lines.append(f"| {stage} | {sec:.0f} |")
  lines += ["", "## Figures", ""]
  main_key = stages_lib.size_key(main)
  dirs = {k.split("@")[0]: v for k, v in first["workdirs"].items()
          if k.endswith(f"@{main_key}") or k == "pretrain"}
  curves = {st: stages_lib.CURVES[stages_lib.BY_NAME[st].kind] for st in dirs}
  if first.get("target") == "codes" and "pretrain" in curves:
    curves["pretrain"] = stages_lib.CODES_CURVE
  figs = plots.protocol_figures(root, dirs, class_names=class_names(meta), curves=curves)
  lines += [f"![{os.path.basename(f)}]({os.path.relpath(f, root)})" for f in figs]
  with open(os.path.join(root, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  from mae_jax import checkpoint
  checkpoint.write_json(os.path.join(root, "results.json"),
                        {"per_seed": per_seed, "timings": timings,
                         "labelled": [s or 0 for s in sizes]})
  return os.path.join(root, "report.md")


def compression_lines(root, first, main):
  """The rate-distortion table of the `compression` stage (first seed) and its figure."""
  import shutil
  res = first["by_labelled"][stages_lib.size_key(main)].get("compression")
  if not res or not res.get("rate_distortion"):
    return []
  lines = ["", "### Rate–distortion: the compressive MAE against zero-suppressed storage "
           "(test split, first seed)", "",
           f"The compressive MAE stores {res['latents']} latents × {res['latent_dim']} float16 "
           f"= {res['latent_bytes']} bytes per jet, plus the occupied-patch bitmap its decoder "
           f"is told ({res['occupancy_bytes']} bytes); the baseline is the converted data's own "
           "zero-suppressed record (pixel index + value per non-zero pixel) and its lossy "
           "variants (float16 values, top-k pixels). Response = mean of decoded / original, "
           "resolution = its std (68% half-width in brackets), over "
           f"{int(res['test/examples'])} test jets, in physical units. Read each resolution "
           "with its response: a record that keeps a tenth of the mass has a small std of the "
           "ratio too."]
  trees = res.get("trees") or {}
  if trees.get("original"):
    o = trees["original"]
    lines += ["", f"Tree AUC: the gradient-boosted trees of observables_gbt (fitted on the "
              f"original observables of {trees['train_examples']:,} train jets, "
              f"{trees['selected_by']}) on the observables of each decoded set; on the "
              f"original test jets {o['auc']:.4f} ± {o['auc_std']:.4f}. ΔAUC = decoded minus "
              "original, in units of its paired-bootstrap std."]
  elif trees.get("not_measured"):
    lines += ["", f"Tree AUC not measured: {trees['not_measured']}."]
  lines += ["", "| representation | bytes per jet | lossless | jet-mass response "
            "| jet-mass resolution | jet-pT response | jet-pT resolution | tree AUC | ΔAUC (σ) |",
            "|---|---|---|---|---|---|---|---|---|"]
  for r in sorted(res["rate_distortion"], key=lambda r: r["bytes_per_jet"]):
    name = f"**{r['name']}**" if r["name"].startswith("compressive") else r["name"]
    auc = diff = "—"
    if r.get("tree_auc") is not None:
      auc = f"{r['tree_auc']:.4f} ± {r['tree_auc_std']:.4f}"
      sig = r.get("tree_auc_diff_sigma")
      diff = f"{r['tree_auc_diff']:+.4f}" + (f" ({sig:+.1f})" if sig is not None else "")
    lines.append(f"| {name} | {r['bytes_per_jet']:,.0f} | {'yes' if r['lossless'] else 'no'} "
                 f"| {r['mass_response']:.4f} | {r['mass_resolution']:.3g} "
                 f"({r['mass_half_width_68']:.3g}) | {r['pt_response']:.4f} "
                 f"| {r['pt_resolution']:.3g} ({r['pt_half_width_68']:.3g}) | {auc} | {diff} |")
  fig = res.get("figure")
  if fig and os.path.exists(fig):
    shutil.copyfile(fig, os.path.join(root, "rate_distortion.png"))
    lines += ["", "![rate-distortion](rate_distortion.png)"]
  return lines


def summary_lines(per_seed, sizes):
  """The few lines printed at the end of a run (test AUCs only if a classifier ran)."""
  main = sizes[-1]
  out = headline(per_seed, main)
  aucs = []
  for st in stages_lib.CLASSIFY_STAGES:
    vals = [s["by_labelled"][stages_lib.size_key(main)].get(st, {}).get("test/auc")
            for s in per_seed]
    if any(v is not None for v in vals):
      aucs.append(f"{st} {fmt(vals)}")
  return (["test AUC: " + ", ".join(aucs)] if aucs else []) + out


def load_results(root):
  with open(os.path.join(root, "results.json")) as f:
    return json.load(f)
