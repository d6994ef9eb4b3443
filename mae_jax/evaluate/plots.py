"""Figures: training loss curve and MAE reconstructions per channel."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mae_jax import checkpoint, parallel  # noqa: E402
from mae_jax.evaluate import reconstruction  # noqa: E402
from mae_jax.models import mae as mae_lib  # noqa: E402


def loss_curve(history_path: str, out_path: str) -> None:
  rows = checkpoint.read_history(history_path)
  if not rows:
    return
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
  ax.set_xlabel("step")
  ax.set_ylabel("masked-patch MSE (train)")
  ax.set_yscale("log")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  plt.close(fig)


def reconstruct(model, params, batch, mask_key, decode=None):
  """(images, masked input, reconstruction with visible patches pasted back, patch mask).
  `decode`: the prediction -> pixels (code targets: the argmax code's centroid)."""
  from mae_jax.models import registry
  images = batch["image"]
  _, aux = model.apply({"params": params}, images, train=False, rngs={"masking": mask_key},
                       **registry.model_inputs(batch))
  pred = (aux["pred"] if decode is None else decode(aux["pred"])).astype(jnp.float32)
  if model.norm_pix_loss:  # back from per-patch normalised pixels
    pred = reconstruction.denormalize_pred(pred, images, model.patch)
  b, h, w, c = images.shape
  grid = (h // model.patch, w // model.patch)
  mask = jnp.repeat(aux["mask"][:, :, None], model.patch**2 * c, axis=-1)
  mask = mae_lib.unpatchify(mask, model.patch, grid, c)
  recon = mae_lib.unpatchify(pred, model.patch, grid, c)
  return images, images * (1 - mask), images * (1 - mask) + recon * mask, aux["mask"]


def core_window(size: int, patch: int, core: int = 55) -> slice:
  """Pixels of the central `core` x `core` region, aligned to the patch grid."""
  n = min(size, max(patch, core // patch * patch))
  start = ((size - n) // 2) // patch * patch
  return slice(start, start + n)


def reconstructions(model, params, pipe, split, mesh, config, out_path, per_class=1,
                    pixel_size=0.0174, max_channels=3, decode=None):
  """Original / masked input / reconstruction of `per_class` jets of each class, for the
  `max_channels` channels with the most |value| in those jets: the jet core (55 x 55 pixels)
  in (Δη, Δφ) from the image centre, η and φ increasing up and right, a colour bar with its
  unit on every panel, a log colour scale for the (sparse, positive) energy channels and a
  symmetric linear one for signed channels (d0, dz); masked patches outlined in red.
  `decode`: maps a prediction that is not pixels to pixels (tasks/targets: code logits ->
  the argmax code's centroid, said in the title)."""
  local = config.batch_size // jax.process_count()
  _, it = pipe.eval_iter(split, local, config.batch_size)
  batch = parallel.global_batch(next(iter(it)), mesh)
  batch_labels = parallel.to_host(jax.jit(lambda x: x, out_shardings=parallel.replicated(mesh))(
      batch["label"]))
  fn = jax.jit(reconstruct, static_argnums=(0, 4), out_shardings=parallel.replicated(mesh))
  # outputs are replicated, so every process can read them (to_host)
  images, masked, recon, patch_mask = parallel.to_host(
      fn(model, params, batch, jax.random.key(config.seed + 7), decode))
  if jax.process_index() != 0:
    return
  names = pipe.meta.get("channel_names") or [f"ch{i}" for i in range(images.shape[-1])]
  fig = reconstruction_figure(images, masked, recon, patch_mask, np.asarray(batch_labels), names,
                              pipe.meta.get("label_names") or [], model.patch,
                              f"normalised ({config.data.normalization})", per_class,
                              pixel_size, max_channels)
  how = "" if decode is None else "; masked patches: the predicted code's centroid"
  fig.suptitle(f"MAE reconstructions, jet core ({split} split; red: masked patches{how})",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(out_path, dpi=90)
  plt.close(fig)


def reconstruction_figure(images, masked, recon, patch_mask, labels, names, label_names, p,
                          unit, per_class=1, pixel_size=0.0174, max_channels=3):
  """The figure of `reconstructions` from host arrays [B, H, W, C] (see its doc)."""
  from matplotlib.colors import LogNorm, Normalize
  from matplotlib.patches import Rectangle
  # jets of each class when the split is labelled (unlabelled data: -1), else the first ones
  rows = [int(i) for k in (0, 1) for i in np.flatnonzero(labels == k)[:per_class]]
  rows = rows or list(range(min(2 * per_class, len(labels))))
  b, h, w, c = images.shape
  ys, xs = core_window(h, p), core_window(w, p)
  channels = np.argsort(-np.abs(images[rows][:, ys, xs]).sum((0, 1, 2)), kind="stable")
  channels = sorted(int(ch) for ch in channels[:max_channels])
  # origin="lower": row r (η = (r - (h-1)/2) · pixel) increases upward
  extent = [(xs.start - (w - 1) / 2 - 0.5) * pixel_size, (xs.stop - (w - 1) / 2 - 0.5) * pixel_size,
            (ys.start - (h - 1) / 2 - 0.5) * pixel_size, (ys.stop - (h - 1) / 2 - 0.5) * pixel_size]
  grid_w = w // p
  fig, axes = plt.subplots(len(channels), 3 * len(rows), figsize=(3.0 * 3 * len(rows),
                                                                    2.6 * len(channels)),
                           squeeze=False)
  for j, row in enumerate(rows):
    label = int(labels[row])
    tag = label_names[label] if 0 <= label < len(label_names) else f"label {label}"
    masked_patches = np.flatnonzero(patch_mask[row] > 0)
    for i, ch in enumerate(channels):
      # one colour scale per channel and jet, set by the original image, for all three panels
      core = images[row, ys, xs, ch]
      lo, hi = float(core.min()), float(core.max())
      if lo < 0:  # d0/dz: symmetric diverging scale, zero in the middle
        vmax = max(abs(lo), abs(hi), 1e-6)
        norm, cmap = Normalize(-vmax, vmax), plt.get_cmap("RdBu_r")
      else:  # energies: a few bright pixels and many faint ones -> log scale
        vmax = max(hi, 1e-6)
        positive = core[core > 0]
        vmin = max(float(positive.min()) if positive.size else vmax * 1e-3, vmax * 1e-3)
        cmap = plt.get_cmap("viridis")
        # zero or negative reconstructed pixels: drawn as the scale's floor
        norm, cmap = LogNorm(vmin, vmax, clip=True), cmap.with_extremes(bad=cmap(0.0))
      for k, (img, title) in enumerate(((images, "original"), (masked, "masked input"),
                                        (recon, "reconstruction"))):
        ax = axes[i, 3 * j + k]
        im = ax.imshow(img[row, ys, xs, ch], cmap=cmap, norm=norm, origin="lower",
                       interpolation="nearest", extent=extent)
        if k > 0:  # outline the masked patches inside the window
          for q in masked_patches:
            r0, c0 = (q // grid_w) * p, (q % grid_w) * p
            if ys.start <= r0 < ys.stop and xs.start <= c0 < xs.stop:
              x0 = (c0 - (w - 1) / 2 - 0.5) * pixel_size
              y0 = (r0 - (h - 1) / 2 - 0.5) * pixel_size
              ax.add_patch(Rectangle((x0, y0), p * pixel_size, p * pixel_size, fill=False,
                                     lw=0.6, ec="red"))
        ax.tick_params(labelsize=6)
        ax.set_xlabel("Δφ", fontsize=7)
        ax.set_ylabel(f"{names[ch]}: Δη" if k == 0 else "Δη", fontsize=7)
        ax.set_title(f"{tag} jet: {title}", fontsize=8)
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=6)
        bar.set_label(f"{names[ch]}, {unit}", fontsize=6)
  return fig


def label_efficiency(per_seed, sizes, stages, out_path):
  """Test AUC (mean ± std over seeds) against the number of labelled jets, per method."""
  fig, ax = plt.subplots(figsize=(5.5, 4))
  xs = [s for s in sizes if s]
  for stage in stages:
    vals = [[p["by_labelled"][str(n)].get(stage, {}).get("test/auc") for p in per_seed]
            for n in xs]
    vals = [[v for v in row if v is not None] for row in vals]
    keep = [i for i, row in enumerate(vals) if row]
    if not keep:
      continue
    m = [np.mean(vals[i]) for i in keep]
    sd = [np.std(vals[i], ddof=1) if len(vals[i]) > 1 else 0.0 for i in keep]
    ax.errorbar([xs[i] for i in keep], m, yerr=sd, marker="o", ms=4, capsize=3, lw=1.2,
                label=stage)
  ax.set_xscale("log")
  ax.set_xlabel("labelled training jets")
  ax.set_ylabel("test AUC")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)
  plt.close(fig)


def rate_distortion(rows, out_path):
  """Bytes per jet (log) against the jet-mass and jet-pT resolution (std of decoded /
  original) of each row of `evaluate.compression.rate_distortion`, lossless rows at 0; and
  against the observable trees' AUC on the decoded jets when the rows have "tree_auc"."""
  panels = [("mass_resolution", "jet mass resolution (std of decoded / original)"),
            ("pt_resolution", "jet pT resolution (std of decoded / original)")]
  if any(r.get("tree_auc") is not None for r in rows):
    panels.append(("tree_auc", "observable-tree AUC on the decoded jets"))
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8))
  for ax, (key, ylabel) in zip(axes, panels):
    for r in rows:
      if r.get(key) is None:
        continue
      mae = r["name"].startswith("compressive")
      ax.plot(r["bytes_per_jet"], r[key], "*" if mae else "o",
              ms=11 if mae else 5, color="C3" if mae else ("C2" if r["lossless"] else "C0"))
      if mae:
        ax.annotate(r["name"], (r["bytes_per_jet"], r[key]), fontsize=6,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per jet")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)
  axes[0].set_title("star: compressive MAE; green: lossless; blue: lossy storage", fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)
  plt.close(fig)


def rate_distortion_budgets(mae_rows, base_rows, out_path, original_auc=None, goal=None):
  """The compressive MAE at several latent budgets (a line, `mae_rows` in bytes order)
  beside the storage baselines (points): bytes per jet (log) against the jet-mass
  resolution, and against the observable trees' AUC on the decoded jets (the originals'
  AUC as a dashed line) when the rows have it. `goal`: evaluate.compression.GOAL, its
  resolution and AUC limits drawn as dotted lines."""
  panels = [("mass_resolution", "jet mass resolution (std of decoded / original)")]
  if any(r.get("tree_auc") is not None for r in list(mae_rows) + list(base_rows)):
    panels.append(("tree_auc", "observable-tree AUC on the decoded jets"))
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
  for ax, (key, ylabel) in zip(axes[0], panels):
    mae = [r for r in mae_rows if r.get(key) is not None]
    if mae:
      ax.plot([r["bytes_per_jet"] for r in mae], [r[key] for r in mae], "*-", ms=10,
              color="C3", label="compressive MAE")
      for r in mae:
        ax.annotate(f"{r['latents']}×{r['latent_dim']}", (r["bytes_per_jet"], r[key]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    for lossless, color, label in ((True, "C2", "lossless storage"),
                                   (False, "C0", "lossy storage")):
      pts = [r for r in base_rows if r.get(key) is not None and r["lossless"] == lossless]
      if pts:
        ax.plot([r["bytes_per_jet"] for r in pts], [r[key] for r in pts], "o", ms=5,
                color=color, label=label)
    if key == "tree_auc" and original_auc is not None:
      ax.axhline(original_auc, color="k", ls="--", lw=0.8, label="original jets")
      if goal:
        ax.axhline(original_auc - goal["tree_auc_diff"], color="k", ls=":", lw=0.8,
                   label="goal")
    if key == "mass_resolution" and goal:
      ax.axhline(goal["mass_resolution"], color="k", ls=":", lw=0.8, label="goal")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per jet (MAE: latent + occupancy bitmap)")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)
  plt.close(fig)


def protocol_figures(root: str, workdirs: dict, class_names=("class 0", "class 1"),
                     curves=None) -> list[str]:
  """Loss curves of every stage, ROC curves on the test split, the reconstruction figure.

  `workdirs`: stage name -> its workdir (one seed's); figures are written into `root`.
  `class_names`: (background, signal) for the ROC axes. `curves`: stage -> {"ylabel",
  "validation" (a history key drawn beside the training loss, or None), "reference" (a
  history key drawn as a dashed line, "ln2", or None), optional "reference_label" (default
  "predict zeros")}, from the protocol's stage table.
  """
  import shutil

  from mae_jax.evaluate import metrics

  curves = curves or {}
  stages = [s for s in workdirs if os.path.exists(os.path.join(workdirs[s], "metrics.jsonl"))]
  out = []
  if stages:
    fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 3), squeeze=False)
    for ax, stage in zip(axes[0], stages):
      spec = curves.get(stage, {})
      rows = checkpoint.read_history(workdirs[stage])
      ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1, label="train")
      key, ref = spec.get("validation"), spec.get("reference")
      val = [r for r in checkpoint.read_history(workdirs[stage], train=False) if key and key in r]
      if val:
        ax.plot([r["step"] for r in val], [r[key] for r in val], "o-", ms=3, lw=1,
                label="validation")
        if ref and ref in val[-1]:
          ax.axhline(val[-1][ref], color="k", ls="--", lw=0.8,
                     label=spec.get("reference_label", "predict zeros"))
      if ref == "ln2" and rows:
        ax.axhline(np.log(2.0), color="k", ls="--", lw=0.8, label="ln 2 (no information)")
      ax.set_title(stage, fontsize=9)
      ax.set_xlabel("step")
      ax.set_ylabel(spec.get("ylabel", "training loss"), fontsize=8)
      ax.set_yscale("log")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=6)
    fig.tight_layout()
    out.append(os.path.join(root, "loss_curves.png"))
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)

  fig, ax = plt.subplots(figsize=(4.5, 4))
  for stage in workdirs:
    path = os.path.join(workdirs[stage], "test_scores.npz")
    if not os.path.exists(path):
      continue
    d = np.load(path)
    fpr, tpr, _ = metrics.roc_curve(d["label"], d["score"])
    ok = fpr > 0  # rejection is unbounded where no background passes: not drawn
    ax.plot(tpr[ok], 1.0 / fpr[ok], lw=1.2,
            label=f"{stage} (AUC {metrics.roc_auc(d['label'], d['score']):.3f})")
  background, signal = class_names
  ax.set_xlabel(f"signal efficiency: {signal} jets kept (test split)")
  ax.set_ylabel(f"background rejection: 1 / {background} jets kept")
  ax.set_yscale("log")
  ax.set_xlim(0, 1)
  ax.grid(alpha=0.3)
  if ax.lines:  # no classification stage ran: no ROC figure
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.append(os.path.join(root, "roc_curves.png"))
    fig.savefig(out[-1], dpi=110)
  plt.close(fig)

  rec = os.path.join(workdirs.get("pretrain", ""), "reconstruction.png")
  if "pretrain" in workdirs and os.path.exists(rec):
    out.append(os.path.join(root, "reconstruction.png"))
    shutil.copyfile(rec, out[-1])
  return out
