"""What the protocol measures outside the trainer: reconstruction of the pretrained MAE,
the simple-observable baseline, parameter counts and stored bytes."""

from __future__ import annotations

import json
import os

import numpy as np


def reconstruction(pretrain_dir, config, splits, data_dir=None):
  """Masked/all/occupied/empty MSE, per channel and energy errors of the pretrained MAE on
  each split of `data_dir` (default: the pretrain config's data); (results, dataset meta).

  A prediction that is not pixels is decoded by its target first (code targets: the argmax
  code's centroid, from the codebook in `pretrain_dir`); each split's results then also hold
  "decoded" and the skills of the true codes' centroids ("codebook_skill_masked",
  "codebook_skill_occupied"): the ceiling of any code predictor."""
  import jax
  from mae_jax import checkpoint, experiment, parallel
  from mae_jax.evaluate import reconstruction as rec
  from mae_jax.tasks import mae as mae_task
  from mae_jax.tasks import targets as targets_lib

  mesh = parallel.make_mesh(config.mesh)
  pipe = experiment.make_pipeline(config, data_dir, train=False)
  model = experiment.build_model(config, pipe.image_shape)
  targets = targets_lib.build(config, workdir=pretrain_dir)  # a codebook is read, not refitted
  quantised = hasattr(targets, "decode")
  # parameters only (no optimizer state, no manager that could prune the pretrain run)
  params = checkpoint.read_arrays(pretrain_dir, item="params")[0]["params"]

  @jax.jit
  def forward(params, batch, index):
    mask_key, drop_key = experiment.step_keys(config.seed + 1, index)
    (_, aux), _ = experiment.apply_model(model, params, {}, batch, False, mask_key, drop_key)
    ceiling = (targets.decode_codes(targets(batch["image"])) if quantised
               else jax.numpy.zeros(()))
    return mae_task.decode(targets, aux["pred"]), aux["mask"], ceiling

  out = {}
  for split in splits:
    total = rec.init_sums(pipe.image_shape[-1])
    ceiling_total = rec.init_sums(pipe.image_shape[-1])
    n_batches, it = pipe.eval_iter(split, config.batch_size, config.batch_size)
    for i, batch in enumerate(it):
      pred, mask, ceiling = jax.device_get(forward(params, parallel.global_batch(batch, mesh), i))
      keep = batch["valid"] > 0
      if config.model.norm_pix_loss:
        pred = rec.denormalize_pred(pred, batch["image"], model.patch)
      sums = rec.reconstruction_sums_jit(batch["image"][keep], np.asarray(pred)[keep],
                                         np.asarray(mask)[keep], patch=model.patch)
      total = rec.accumulate(total, jax.device_get(sums))
      if quantised:
        sums = rec.reconstruction_sums_jit(batch["image"][keep], np.asarray(ceiling)[keep],
                                           np.asarray(mask)[keep], patch=model.patch)
        ceiling_total = rec.accumulate(ceiling_total, jax.device_get(sums))
      if n_batches >= 20 and (i + 1) % max(n_batches // 5, 1) == 0:
        print(f"[protocol]   reconstruction {split}: {i + 1}/{n_batches} batches", flush=True)
    out[split] = rec.finalize(total)
    if quantised:
      ceiling = rec.finalize(ceiling_total)
      out[split].update(decoded="the argmax code's centroid",
                        codebook_skill_masked=ceiling["skill_masked"],
                        codebook_skill_occupied=ceiling["skill_occupied"])
  feats = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method=model.encode),
                         params, jax.ShapeDtypeStruct((1, *pipe.image_shape), np.float32))
  out["feature_width"] = int(feats["mean"].shape[-1])
  return out, pipe.meta


def observable_features(data_dir, split, cache_dir):
  """(features, labels, names) of a split's raw images, cached in cache_dir (npz)."""
  d = observable_table(data_dir, split, cache_dir)
  return d["x"], d["y"], d["names"]


def observable_table(data_dir, split, cache_dir):
  """{"x": features, "y": labels, "names", "t": regression targets or None} of a split's raw
  images in record order, cached in cache_dir (npz; a cache without targets is refreshed
  when the dataset has them, and one whose feature names differ from today's observables,
  e.g. written before N-subjettiness was added, is recomputed rather than reused)."""
  from mae_jax.data import meta as meta_lib
  from mae_jax.data import pipeline as pipeline_lib
  from mae_jax.evaluate import baselines
  path = os.path.join(cache_dir, f"observables_{split}.npz")
  meta = meta_lib.load_meta(data_dir)
  has_targets = bool(meta.get("target_names"))
  if os.path.exists(path):
    d = np.load(path)
    # today's feature names, from an empty batch of the dataset's image shape
    current = baselines.observables(np.zeros((0, *meta["image_shape"]), np.float32),
                                    meta.get("channel_names"))[1]
    if ("t" in d or not has_targets) and list(d["names"]) == list(current):
      return {"x": d["x"], "y": d["y"], "names": list(d["names"]),
              "t": d["t"] if "t" in d else None}
  pipe = pipeline_lib.Pipeline(data_dir, "none")
  n_batches, it = pipe.eval_iter(split, 250, 250)
  xs, ys, ts = [], [], []
  for batch in it:
    keep = batch["valid"] > 0
    x, names = baselines.observables(batch["image"][keep], pipe.meta.get("channel_names"))
    xs.append(x)
    ys.append(batch["label"][keep])
    if "targets" in batch:
      ts.append(batch["targets"][keep])
  out = {"x": np.concatenate(xs), "y": np.concatenate(ys), "names": names,
         "t": np.concatenate(ts) if ts else None}
  os.makedirs(cache_dir, exist_ok=True)
  extra = {"t": out["t"]} if ts else {}
  np.savez(path, x=out["x"], y=out["y"], names=np.array(names), **extra)
  return out


def observable_baseline(data_dir, seed, labelled, cache_dir, workdir, bootstrap=200):
  """Logistic regression on image-derived jet observables, trained on the (labelled subset
  of the) train split, evaluated once on the test split. Metrics as the trainer's."""
  from mae_jax import checkpoint
  from mae_jax.data import pipeline as pipeline_lib
  from mae_jax.evaluate import baselines, metrics
  import time
  done = os.path.join(workdir, "final_metrics.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f), False
  t0 = time.time()
  x, y, names = observable_features(data_dir, "train", cache_dir)
  if labelled:
    subset = pipeline_lib.Pipeline(data_dir, "none").labelled_subset("train", int(labelled), seed)
    x, y = x[subset], y[subset]
  xt, yt, _ = observable_features(data_dir, "test", cache_dir)
  model = baselines.LogisticRegression().fit(x, y)
  scores = model.decision_function(xt)
  rep = metrics.classification_report(yt.astype(np.int64), scores, logits=True,
                                      n_bootstrap=bootstrap)
  final = {f"test/{k}": float(v) for k, v in rep.items() if np.isscalar(v)}
  final.update({"test/examples": float(len(yt)), "train_examples": int(len(y)),
                "features": names, "selected_by": "no selection (fixed L2 = 1)",
                "train_seconds": time.time() - t0})
  os.makedirs(workdir, exist_ok=True)
  np.savez(os.path.join(workdir, "test_scores.npz"), label=yt, score=scores)
  checkpoint.write_json(done, final)
  return final, True


def count_params(workdir):
  import jax
  from mae_jax import checkpoint
  params, _ = checkpoint.read_arrays(workdir, item="params")
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))


def stored_bytes_per_jet(data_dir):
  with open(os.path.join(data_dir, "dataset_info.json")) as f:
    info = json.load(f)
  n = sum(int(x) for s in info["splits"] for x in s["shardLengths"])
  size = sum(os.path.getsize(os.path.join(data_dir, f)) for f in os.listdir(data_dir)
             if ".tfrecord-" in f)
  return size / max(n, 1)
