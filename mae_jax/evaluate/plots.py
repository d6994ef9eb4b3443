"""Figures: training loss curve and MAE reconstructions per channel."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mae_jax import parallel  # noqa: E402
from mae_jax.models import mae as mae_lib  # noqa: E402


def loss_curve(history_path: str, out_path: str) -> None:
  from mae_jax import trainer
  rows = trainer.read_history(history_path)
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


def reconstruct(model, params, batch, mask_key):
  """(images, masked input, reconstruction with visible patches pasted back)."""
  from mae_jax import experiment
  images = batch["image"]
  _, aux = model.apply({"params": params}, images, train=False, rngs={"masking": mask_key},
                       **experiment.model_inputs(batch))
  pred = aux["pred"].astype(jnp.float32)
  if model.norm_pix_loss:  # back from per-patch normalised pixels
    mean, std = mae_lib.patch_stats(aux["target"])
    pred = pred * std + mean
  b, h, w, c = images.shape
  grid = (h // model.patch, w // model.patch)
  mask = jnp.repeat(aux["mask"][:, :, None], model.patch**2 * c, axis=-1)
  mask = mae_lib.unpatchify(mask, model.patch, grid, c)
  recon = mae_lib.unpatchify(pred, model.patch, grid, c)
  return images, images * (1 - mask), images * (1 - mask) + recon * mask


def reconstructions(model, params, pipe, split, mesh, config, out_path, per_class=2):
  """Original / masked input / reconstruction for each channel, `per_class` jets of each class."""
  local = config.batch_size // jax.process_count()
  _, it = pipe.eval_iter(split, local, config.batch_size)
  batch = parallel.global_batch(next(iter(it)), mesh)
  batch_labels = parallel.to_host(jax.jit(lambda x: x, out_shardings=parallel.replicated(mesh))(
      batch["label"]))
  fn = jax.jit(reconstruct, static_argnums=0, out_shardings=parallel.replicated(mesh))
  # outputs are replicated, so every process can read them (to_host)
  images, masked, recon = parallel.to_host(
      fn(model, params, batch, jax.random.key(config.seed + 7)))
  if jax.process_index() != 0:
    return
  names = pipe.meta.get("channel_names") or [f"ch{i}" for i in range(images.shape[-1])]
  label_names = pipe.meta.get("label_names") or []
  labels = np.asarray(batch_labels)
  # jets of each class when the split is labelled (unlabelled data: -1), else the first ones
  rows = [int(i) for k in (0, 1) for i in np.flatnonzero(labels == k)[:per_class]]
  rows = rows or list(range(min(2 * per_class, len(labels))))
  n = len(rows)
  c = images.shape[-1]
  fig, axes = plt.subplots(c, 3 * n, figsize=(2.0 * 3 * n, 1.9 * c), squeeze=False)
  for j, row in enumerate(rows):
    label = int(labels[row])
    tag = label_names[label] if 0 <= label < len(label_names) else f"label {label}"
    for ch in range(c):
      # one colour scale per channel, set by the original image, for all three panels
      lo, hi = float(images[row, ..., ch].min()), float(images[row, ..., ch].max())
      signed = lo < 0  # d0/dz: symmetric diverging scale, zero in the middle
      vmax = max(abs(lo), abs(hi), 1e-6) if signed else max(hi, 1e-6)
      vmin, cmap = (-vmax, "RdBu_r") if signed else (0.0, "viridis")
      for k, (img, title) in enumerate(((images, "original"), (masked, "masked input"),
                                        (recon, "reconstruction"))):
        ax = axes[ch, 3 * j + k]
        ax.imshow(img[row, ..., ch], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if ch == 0:
          ax.set_title(f"{tag} jet: {title}", fontsize=8)
        if k == 0 and j == 0:
          ax.set_ylabel(names[ch], fontsize=8)
  fig.suptitle(f"MAE reconstructions ({split} split, normalised units: {config.data.normalization})",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)


def protocol_figures(root: str, workdirs: dict) -> list[str]:
  """Loss curves of every stage, ROC curves on the test split, the reconstruction figure.

  `workdirs`: stage name -> its workdir (one seed's); figures are written into `root`.
  """
  import shutil

  from mae_jax import trainer
  from mae_jax.evaluate import metrics

  stages = [s for s in workdirs if os.path.exists(os.path.join(workdirs[s], "metrics.jsonl"))]
  out = []
  fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 3), squeeze=False)
  for ax, stage in zip(axes[0], stages):
    rows = trainer.read_history(workdirs[stage])
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set_title(stage, fontsize=9)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("train loss")
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
  ax.set_xlabel("signal efficiency (test split)")
  ax.set_ylabel("background rejection 1/FPR")
  ax.set_yscale("log")
  ax.set_xlim(0, 1)
  ax.grid(alpha=0.3)
  if ax.lines:  # no classification stage ran: an empty frame, no legend
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
