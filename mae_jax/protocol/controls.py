"""The stages that are not trainer runs (`Stage.run` in protocol/stages.py): each takes a
`stages.Job` and returns (final metrics, trained now), writing WORKDIR/final_metrics.json
(a rerun reuses it) and, for classifiers, WORKDIR/test_scores.npz as the trainer does.

  observables_lr       logistic regression on the observables (measure.observable_baseline)
  observables_gbt      gradient-boosted trees on the observables (evaluate/trees.py)
  observables_encoder  the same trees on [observables, frozen pretrained encoder features]
  calo_regression      jet mass and pT from the image's calorimeter mass and E_T sum,
                       each linearly calibrated on the train split
  compression          trains the compressive MAE (model.latents), decodes the test split
                       from its float16 latents, rate-distortion table beside the storage
                       baselines (evaluate/compression.py)
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from mae_jax.errors import UsageError
from mae_jax.protocol import measure


def _done(workdir):
  path = os.path.join(workdir, "final_metrics.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


def _subset(job, y):
  """Record positions of the labelled subset of the train split (all when no size)."""
  if not job.size:
    return np.arange(len(y))
  from mae_jax.data import pipeline as pipeline_lib
  return pipeline_lib.Pipeline(job.args.data, "none").labelled_subset("train", int(job.size),
                                                                      job.seed)


def _finish(job, final, t0, labels=None, scores=None):
  from mae_jax import checkpoint
  final["train_seconds"] = time.time() - t0
  os.makedirs(job.workdir, exist_ok=True)
  if scores is not None:
    np.savez(os.path.join(job.workdir, "test_scores.npz"), label=labels, score=scores)
  checkpoint.write_json(os.path.join(job.workdir, "final_metrics.json"), final)
  return final, True


def observables_lr(job):
  return measure.observable_baseline(job.args.data, job.seed, job.size, job.cache, job.workdir)


def _tables(job):
  """Observable tables of train (labelled subset), validation (None if absent) and test."""
  from mae_jax.data import meta as meta_lib
  splits = meta_lib.load_meta(job.args.data)["splits"]
  tr = measure.observable_table(job.args.data, "train", job.cache)
  keep = _subset(job, tr["y"])
  tr = {**tr, "x": tr["x"][keep], "y": tr["y"][keep], "keep": keep}
  va = (measure.observable_table(job.args.data, "validation", job.cache)
        if "validation" in splits else None)
  te = measure.observable_table(job.args.data, "test", job.cache)
  return tr, va, te


def _fit_trees(job, x, y, xv, yv):
  """(model, hyper-parameters, [(point, validation AUC)], selected_by): the grid's best on
  validation, or its first point when there is no validation split."""
  from mae_jax.evaluate import trees
  if xv is None:  # no validation split: the first grid point, said so in the metrics
    point = trees.grid_points(job.args.trees_grid)[0]
    model, _, grid = trees.fit_selected(x, y, x, y, job.seed, {k: [v] for k, v in point.items()})
    return model, point, grid, "no validation split: fixed hyper-parameters"
  model, point, grid = trees.fit_selected(x, y, xv, yv, job.seed, job.args.trees_grid)
  return model, point, grid, "validation AUC over the grid"


def _trees(job, x, y, xv, yv, xt, yt, names, what):
  from mae_jax.evaluate import metrics, trees
  t0 = time.time()
  model, point, grid, selected_by = _fit_trees(job, x, y, xv, yv)
  scores = trees.score(model, xt)
  rep = metrics.classification_report(yt.astype(np.int64), scores, logits=True,
                                      n_bootstrap=200)
  final = {f"test/{k}": float(v) for k, v in rep.items() if np.isscalar(v)}
  final.update({"test/examples": float(len(yt)), "train_examples": int(len(y)),
                "features": names, "inputs": what, "selected": point,
                "selected_by": selected_by,
                "grid": [{**p, "validation_auc": float(a)} for p, a in grid]})
  return _finish(job, final, t0, yt, scores)


def observables_gbt(job):
  done = _done(job.workdir)
  if done is not None:
    return done, False
  tr, va, te = _tables(job)
  return _trees(job, tr["x"], tr["y"], None if va is None else va["x"],
                None if va is None else va["y"], te["x"], te["y"], tr["names"], "observables")


def encoder_features(job, split):
  """Pooled features [N, D] of the frozen pretrained encoder of the job's seed on a split of
  --data, in record order (pooled as the probe pools them), cached next to the pretrain
  checkpoint (WORKDIR/features_{pool}_{split}.npz)."""
  from mae_jax.protocol import stages
  pre_dir = stages.run_dir(job.args.root, job.seed, None, "pretrain")
  probe = job.config_for("probe")
  pool, include_cls = probe.model.pool, bool(probe.model.get("include_cls", False))
  path = os.path.join(pre_dir, f"features_{pool}{'_cls' if include_cls else ''}_{split}.npz")
  if os.path.exists(path):
    d = np.load(path)
    return d["x"], d["y"]
  from mae_jax import checkpoint
  params = checkpoint.read_arrays(pre_dir, item="params")[0]["params"]
  x, y = pooled_features(job.config_for("pretrain"), probe, job.args.data, split, params)
  np.savez(path, x=x, y=y)
  return x, y


def pooled_features(pre, probe, data_dir, split, params):
  """([N, D] float64 features, [N] labels) of the MAE built by config `pre` with `params`
  on a split of `data_dir`, read and pooled as the probe config reads and pools them."""
  import jax
  from mae_jax import experiment, parallel
  from mae_jax.models import heads, registry
  pool, include_cls = probe.model.pool, bool(probe.model.get("include_cls", False))
  mesh = parallel.make_mesh(pre.mesh)
  pipe = experiment.make_pipeline(probe, data_dir, train=False)  # the probe's inputs
  model = experiment.build_model(pre, pipe.image_shape)

  @jax.jit
  def features(params, batch):
    out = model.apply({"params": params}, batch["image"], method=model.encode,
                      **registry.model_inputs(batch))
    return heads.pool_tokens(out["tokens"], pool, include_cls, out.get("valid"))

  xs, ys = [], []
  _, it = pipe.eval_iter(split, probe.batch_size, probe.batch_size)
  for batch in it:
    f = jax.device_get(features(params, parallel.global_batch(batch, mesh)))
    keep = batch["valid"] > 0
    xs.append(np.asarray(f, np.float64)[keep])
    ys.append(batch["label"][keep])
  return np.concatenate(xs), np.concatenate(ys)


def observables_encoder(job):
  done = _done(job.workdir)
  if done is not None:
    return done, False
  tr, va, te = _tables(job)

  def joined(table, split, keep=None):
    f, y = encoder_features(job, split)
    if keep is not None:
      f, y = f[keep], y[keep]
    if not np.array_equal(y, table["y"]):  # both in record order: a mismatch is a bug
      raise RuntimeError(f"encoder features and observables of {split} are not in the same "
                         "jet order")
    return np.concatenate([table["x"], f], axis=1)

  width = encoder_features(job, "test")[0].shape[1]
  names = list(tr["names"]) + [f"encoder_{i}" for i in range(width)]
  return _trees(job, joined(tr, "train", tr["keep"]), tr["y"],
                None if va is None else joined(va, "validation"),
                None if va is None else va["y"], joined(te, "test"), te["y"], names,
                "observables + frozen pretrained encoder features")


# what the physicist reads off the image for each target: (observable, transform)
CALO_ESTIMATES = {"jet_mass": ("calo_mass", lambda v: v),
                  "jet_pt": ("log_calo_et", np.expm1)}  # E_T sum back from log(1 + sum)


def calo_regression(job):
  done = _done(job.workdir)
  if done is not None:
    return done, False
  from mae_jax.data import meta as meta_lib
  from mae_jax.evaluate import metrics
  from mae_jax.protocol import stages
  t0 = time.time()
  targets = meta_lib.load_meta(job.args.data).get("target_names") or []
  tr, _, te = _tables(job)
  if tr["t"] is None or te["t"] is None:
    raise UsageError(f"{job.args.data} has no regression targets (jet_mass, jet_pt): the "
                     "regression stages need a dataset that records them")
  final = {"test/examples": float(len(te["y"])), "train_examples": int(len(tr["y"])),
           "calibration": {}}
  for name in stages.REGRESS_TARGETS.split(","):
    feature, transform = CALO_ESTIMATES[name]
    col = targets.index(name)
    i = list(tr["names"]).index(feature)
    raw, raw_t = transform(tr["x"][:, i]), transform(te["x"][:, i])
    true = np.asarray(tr["t"], np.float64)[tr["keep"], col]
    slope, intercept = np.polyfit(raw, true, 1)  # least squares on the train split
    rep = metrics.regression_metrics(np.asarray(te["t"], np.float64)[:, col],
                                     intercept + slope * raw_t)
    final.update({f"test/{name}_{k}": float(v) for k, v in rep.items() if k != "n"})
    final["calibration"][name] = {"from": feature, "slope": float(slope),
                                  "intercept": float(intercept)}
  return _finish(job, final, t0)


def _compressive_codec(model, params, mesh, value_dtype="float16"):
  """codec(batch) -> (pred at patch_ids, bytes per jet): z is stored as `value_dtype` (the
  record), decoded from that stored copy; bytes = z + the occupancy bitmap."""
  import jax
  import jax.numpy as jnp
  from mae_jax import parallel
  from mae_jax.models import compressive

  @jax.jit
  def run(params, images, patch_ids):
    z, ids = model.apply({"params": params}, images, patch_ids, method=model.compress)
    z = z.astype(value_dtype).astype(jnp.float32)  # what the record holds
    grid = (images.shape[1] // model.patch, images.shape[2] // model.patch)
    return model.apply({"params": params}, z, ids, grid, method=model.decompress), z.shape

  def codec(batch):
    b = parallel.global_batch({"image": batch["image"], "patch_ids": batch["patch_ids"]}, mesh)
    pred, (_, k, d) = run(params, b["image"], b["patch_ids"])
    h, w = batch["image"].shape[1:3]
    nbytes = (compressive.bytes_per_jet(k, d, np.dtype(value_dtype).itemsize)
              + compressive.occupancy_bytes((h // model.patch) * (w // model.patch)))
    return np.asarray(jax.device_get(pred)), np.full(len(batch["image"]), nbytes, np.int64)
  return codec


def _observable_trees(job):
  """The trees of `observables_gbt` for the `compression` stage: fitted on the ORIGINAL
  observables of the whole train split of --data (the protocol's cache), hyper-parameters
  chosen on the validation split's; (model, info) or (None, why not). The choice is cached
  (CACHE/trees_observables_seed{S}.json, keyed by the grid, the split sizes and the feature
  names), so that further compression runs sharing the cache (one per latent budget) fit
  one point, not the whole grid (minutes on a loaded 2-core machine)."""
  from mae_jax import checkpoint
  from mae_jax.data import meta as meta_lib
  from mae_jax.evaluate import trees
  splits = meta_lib.load_meta(job.args.data)["splits"]
  if "train" not in splits:
    return None, f"{job.args.data} has no train split to fit the trees on"
  tr = measure.observable_table(job.args.data, "train", job.cache)
  va = (measure.observable_table(job.args.data, "validation", job.cache)
        if "validation" in splits else None)
  for name, t in (("train", tr), ("validation", va)):
    if t is not None and set(np.unique(t["y"]).tolist()) != {0, 1}:
      return None, (f"the {name} split of {job.args.data} does not hold labels 0 and 1 "
                    f"(has {sorted(np.unique(t['y']).tolist())})")
  path = os.path.join(job.cache, f"trees_observables_seed{job.seed}.json")
  key = {"grid": {k: list(v) for k, v in job.args.trees_grid.items()},
         "train": int(len(tr["y"])), "validation": int(0 if va is None else len(va["y"])),
         "features": list(tr["names"])}
  cached = None
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
  if cached is not None and cached.get("key") == key:
    point, selected_by = cached["selected"], f"{cached['selected_by']} (choice cached in {path})"
    model = trees.fit_selected(tr["x"], tr["y"], tr["x"], tr["y"], job.seed,
                               {k: [v] for k, v in point.items()})[0]
  else:
    model, point, grid, selected_by = _fit_trees(
        job, tr["x"], tr["y"], None if va is None else va["x"], None if va is None else va["y"])
    os.makedirs(job.cache, exist_ok=True)
    checkpoint.write_json(path, {"key": key, "selected": point, "selected_by": selected_by,
                                 "grid": [{**p, "validation_auc": float(a)} for p, a in grid]})
  return model, {"selected": point, "selected_by": selected_by,
                 "train_examples": int(len(tr["y"])), "features": list(tr["names"])}


def compression(job):
  """Trains the compressive MAE (the pretrain recipe + `model.latents`, on --pretrain-data,
  labels ignored), decodes the test split of --data from float16 latents (the first
  --compression-jets of them, all if 0) and writes the rate-distortion table (decoded jets'
  mass and pT response / resolution, bytes per jet, beside the storage baselines of
  evaluate/storage.py) and rate_distortion.png. When --data has labels, every row also gets
  the test AUC of the `observables_gbt` trees (fitted and chosen on the original
  observables of train / validation) on the observables of its decoded jets, and the
  paired difference from their AUC on the originals. One workdir per seed
  (ROOT/seed{S}/compression), whatever the labelled-set size."""
  from mae_jax.errors import UsageError
  from mae_jax.protocol import stages
  wd = stages.run_dir(job.args.root, job.seed, None, job.stage.name)
  done = _done(wd)
  if done is not None:
    return done, False
  cfg = job.config_for(job.stage.name)
  if cfg.model.get("tokens") != "sparse" or not int(cfg.model.get("latents", 0)):
    raise UsageError(f"stage {job.stage.name} needs --tokens sparse and model.latents > 0 "
                     f"(got tokens={cfg.model.get('tokens')!r}, "
                     f"latents={cfg.model.get('latents')})")
  pre = job.config_for("pretrain")  # the recipe: its data, steps and evaluation
  cfg.data.dir, cfg.data.train_examples = job.args.pretrain_data, pre.data.train_examples
  cfg.eval_every = pre.eval_every
  if job.stage.name not in job.args.steps_by_stage:  # --steps compression=N, else pretrain's
    cfg.total_steps, cfg.warmup_steps = pre.total_steps, pre.warmup_steps
  t0 = time.time()
  trained, now = stages.run_stage(cfg, os.path.join(wd, "train"), f"{job.stage.name} (train)")
  if "preempted_at" in trained:  # stopped by a signal: the protocol stops and says so
    return trained, now
  from mae_jax import checkpoint, experiment, parallel
  from mae_jax.evaluate import compression as comp
  from mae_jax.evaluate import plots, trees
  from mae_jax.models import compressive
  t_eval = time.time()
  tree_model, tree_info = _observable_trees(job)
  pipe = experiment.make_pipeline(cfg, job.args.data, train=False)
  model = experiment.build_model(cfg, pipe.image_shape)
  params = checkpoint.read_arrays(os.path.join(wd, "train"), item="params")[0]["params"]
  codec = _compressive_codec(model, params, parallel.make_mesh(cfg.mesh))
  k, d = model.latents, model.latent_dim or model.decode_size()[0].width
  name = f"compressive MAE, z {k}×{d} float16 + occupancy bitmap"
  acc = comp.RateDistortion(pipe.meta.get("channel_names"), baselines=True,
                            observables=tree_model is not None)
  cap = int(getattr(job.args, "compression_jets", 0) or 0)
  total = int(pipe.meta["splits"]["test"]["num_examples"])
  total = min(total, cap) if cap else total
  n = 0
  for orig, dec, nbytes, labels in comp.iter_decoded(pipe, "test", codec, model.patch,
                                                     cfg.batch_size, cap):
    acc.add(orig, {name: (nbytes, dec)}, labels if tree_model is not None else None)
    n += len(orig)
    print(f"[protocol]   compression: {n}/{total} test jets decoded and scored "
          f"({time.time() - t_eval:.0f} s)", flush=True)
  rows = acc.rows()
  final = {"rate_distortion": rows, "latents": int(k), "latent_dim": int(d),
           "latent_bytes": compressive.bytes_per_jet(int(k), int(d), 2),
           "occupancy_bytes": compressive.occupancy_bytes(
               (pipe.image_shape[0] // model.patch) * (pipe.image_shape[1] // model.patch)),
           "test/examples": float(n), "compression_jets": cap,
           "train": {kk: v for kk, v in trained.items() if isinstance(v, (int, float))},
           "figure": os.path.join(wd, "rate_distortion.png")}
  if tree_model is None:
    final["trees"] = {"not_measured": tree_info}
  else:
    labels = acc.labels
    if set(np.unique(labels).tolist()) != {0, 1}:
      final["trees"] = {"not_measured": "the scored test jets do not hold both classes"}
    else:
      feats = acc.features
      aucs = comp.tree_auc({s: trees.score(tree_model, x) for s, x in feats.items()}, labels,
                           n_bootstrap=200, seed=job.seed)
      for r in rows:
        a = aucs[r["name"]]
        r.update({"tree_auc": a["auc"], "tree_auc_std": a["auc_std"],
                  "tree_auc_diff": a["diff"], "tree_auc_diff_std": a["diff_std"],
                  "tree_auc_diff_sigma": a["diff_sigma"]})
      orig_auc = aucs[comp.ORIGINAL]
      final["trees"] = {**tree_info, "original": {"auc": orig_auc["auc"],
                                                  "auc_std": orig_auc["auc_std"]},
                        "test_jets": int(len(labels)), "n_signal": int(labels.sum())}
  final["eval_seconds"] = time.time() - t_eval
  plots.rate_distortion(rows, final["figure"])
  final["train_seconds"] = time.time() - t0
  os.makedirs(wd, exist_ok=True)
  checkpoint.write_json(os.path.join(wd, "final_metrics.json"), final)
  return final, True
