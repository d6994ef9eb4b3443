"""Discrete code targets (tasks/targets/codes.py): the k-means codebook, the code IDs, the
cross-entropy on masked tokens, training, resume, and the stages after a codes pretraining."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import checkpoint, experiment, tasks, trainer
from mae_jax.errors import UsageError
from mae_jax.models import mae as mae_lib
from mae_jax.models import sparse
from mae_jax.tasks import mae as mae_task
from mae_jax.tasks.targets import codes
from data_fixtures import sparse_images
from helpers import converted_dataset, load_config

P, K = 5, 12


def np_codes(vectors, centroids):
  """float64 reference: 0 for an empty patch, else 1 + argmin of the squared distances."""
  x, c = np.asarray(vectors, np.float64), np.asarray(centroids, np.float64)
  d = ((x[..., None, :] - c[1:]) ** 2).sum(-1)
  return np.where(np.any(x != 0, -1), 1 + d.argmin(-1), 0)


def np_ce(logits, labels, weight):
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
  return (ce * weight).sum() / weight.sum()


@pytest.fixture(scope="module")
def toy():
  """Sparse 25x25x3 images in log1p units and a codebook drawn from their occupied patches."""
  x = np.log1p(sparse_images(4, 25, 25, 3, seed=1, frac=0.006))
  v = codes.patchify_np(x, P).reshape(-1, P * P * 3)
  occ = v[np.any(v != 0, -1)]
  rng = np.random.default_rng(0)
  centroids = np.concatenate([np.zeros((1, v.shape[1])), occ[rng.choice(len(occ), K - 1, False)]
                              + rng.normal(0, 0.05, (K - 1, v.shape[1]))]).astype(np.float32)
  return jnp.asarray(x), codes.Targets(P, centroids, np.arange(K) + 3)


def test_code_ids_are_a_float64_argmin_and_empty_patches_get_code_0(toy):
  x, targets = toy
  got = np.asarray(targets(x))
  want = np_codes(codes.patchify_np(np.asarray(x), P), targets.centroids)
  np.testing.assert_array_equal(got, want)
  assert (got == 0).any() and len(np.unique(got[got > 0])) > 3  # several codes in use
  # at slot ids (sparse tokens): the same codes gathered, padding (-1) gets the empty code
  ids = sparse.occupied_patch_ids(x, P, capacity=30)
  at = np.asarray(targets(x, ids))
  np.testing.assert_array_equal(at, np.where(ids >= 0, np.take_along_axis(
      want, np.maximum(np.asarray(ids), 0), 1), 0))
  # decoding: the argmax code's centroid
  logits = jax.nn.one_hot(jnp.asarray(want), K) * 5.0
  np.testing.assert_array_equal(np.asarray(targets.decode(logits)), targets.centroids[want])


def test_kmeans_lowers_inertia_and_matches_sklearn_on_blobs():
  """Lloyd never raises the inertia (within round-off) and ends well below the k-means++
  seeding; on well-separated blobs it reaches scikit-learn's KMeans inertia (best of 10
  inits) to 0.1% (stated tolerance; measured: equal to ~1e-12)."""
  from sklearn.cluster import KMeans
  from sklearn.datasets import make_blobs
  x, _ = make_blobs(1500, n_features=6, centers=7, cluster_std=0.8, random_state=3)
  centroids, labels, inertia = codes.kmeans(x, 7, seed=0)
  assert inertia[-1] < 0.9 * inertia[0]
  assert all(b <= a * (1 + 1e-12) for a, b in zip(inertia, inertia[1:]))
  np.testing.assert_allclose(inertia[-1], ((x - centroids[labels]) ** 2).sum(), rtol=1e-10)
  ref = KMeans(7, n_init=10, random_state=0).fit(x).inertia_
  np.testing.assert_allclose(inertia[-1], ref, rtol=1e-3)
  # the same seed gives the same codebook
  np.testing.assert_array_equal(codes.kmeans(x, 7, seed=0)[0], centroids)
  with pytest.raises(UsageError, match="3 vectors for 7 centroids"):
    codes.kmeans(x[:3], 7, seed=0)


@pytest.mark.parametrize("tokens", ["dense", "sparse"])
def test_loss_is_the_masked_cross_entropy_and_eval_reports_accuracy(toy, tokens):
  """The task's loss = numpy cross-entropy over the masked tokens (dense: masked patches;
  sparse: the masked slots of aux slot_mask, empty queries included); eval's ce / count
  equals it on the grid view, with the code accuracy beside it."""
  x, targets = toy
  config = load_config(arg=f"variant=tiny,tokens={tokens}", task__target="codes",
                       task__codebook_size=K)
  model = experiment.build_model(config, x.shape[1:])
  assert model.pred_dim == K
  rngs = {"params": jax.random.key(0), "masking": jax.random.key(1)}
  variables = model.init(rngs, x)
  assert variables["params"]["decoder"]["pred"]["kernel"].shape[-1] == K
  out = model.apply(variables, x, rngs={"masking": jax.random.key(2)})
  pred, aux = out
  task = mae_task.MaeTask(config, targets)
  grid_codes = np_codes(codes.patchify_np(np.asarray(x), P), targets.centroids)
  if tokens == "sparse":
    ids = np.asarray(aux["slot_ids"])
    labels = np.where(ids >= 0, np.take_along_axis(grid_codes, np.maximum(ids, 0), 1), 0)
    weight = np.asarray(aux["slot_mask"], np.float64)
    assert (labels[weight > 0] == 0).any()  # empty queries: the empty code is a target
  else:
    labels, weight = grid_codes, np.asarray(aux["mask"], np.float64)
  loss = float(task.loss(out, {"image": x}))
  np.testing.assert_allclose(loss, np_ce(pred, labels, weight), rtol=1e-5)
  ev = jax.tree.map(float, task.eval_outputs(out, {"image": x, "valid": jnp.ones(len(x))}))
  gw = np.asarray(aux["mask"], np.float64)
  np.testing.assert_allclose(ev["ce"] / ev["count"], np_ce(aux["pred"], grid_codes, gw), rtol=1e-5)
  acc = ((np.asarray(aux["pred"]).argmax(-1) == grid_codes) * gw).sum() / gw.sum()
  np.testing.assert_allclose(ev["code_accuracy"] / ev["count"], acc, rtol=1e-6)
  s = task.summarize([ev], "validation")
  assert set(s) == {"validation/masked_ce", "validation/masked_ce_predict_frequencies",
                    "validation/masked_code_accuracy", "validation/examples"}
  assert task.selection_metric(s, "validation") == -s["validation/masked_ce"]


def test_pred_dim_zero_keeps_the_pixel_model_and_pixel_only_decoders_refuse_codes():
  x = jnp.zeros((1, 25, 25, 3))
  rngs = {"params": jax.random.key(0), "masking": jax.random.key(1)}
  a = mae_lib.MAE(variant="tiny", patch=5, channels=3).init(rngs, x)
  b = experiment.build_model(load_config(), x.shape[1:]).init(rngs, x)  # task.target=pixels
  assert jax.tree.map(jnp.shape, a) == jax.tree.map(jnp.shape, b)
  for x_, y_ in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x_, y_)
  c = mae_lib.MAE(variant="tiny", patch=5, channels=3, pred_dim=K).init(rngs, x)

  def flat(t):
    return {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(t)}
  fa, fc = flat(a), flat(c)
  assert {k for k in fa if fa[k] != fc[k]} == {"['params']['decoder']['pred']['bias']",
                                               "['params']['decoder']['pred']['kernel']"}
  for name, extra in (("channel_mae", {}), ("mae", {"tokens": "sparse", "latents": 4})):
    cfg = load_config(task__target="codes", model__name=name,
                      **{f"model__{k}": v for k, v in extra.items()})
    with pytest.raises(UsageError, match="predicts pixels only"):
      experiment.build_model(cfg, (25, 25, 3))
  with pytest.raises(UsageError, match="norm_pix_loss"):
    tasks.build(load_config(task__target="codes", model__norm_pix_loss=True), None)
  with pytest.raises(UsageError, match="fits its codebook on the training data"):
    tasks.build(load_config(task__target="codes"))


# ---- end to end on a tiny converted dataset

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return converted_dataset(tmp_path_factory.mktemp("codes_data"), n=(48, 16, 16))


def codes_config(dataset, tokens="sparse", **kw):
  c = load_config(arg=f"variant=tiny,tokens={tokens}", batch_size=8, total_steps=6,
                  warmup_steps=2, lr=1e-3, ckpt_every=3, log_every=1, keep_ckpts=5,
                  task__target="codes", task__codebook_size=K, task__codebook_jets=24)
  c.data.dir = dataset
  c.data.shuffle_buffer = 64
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def pretrained(dataset, tmp_path_factory):
  """A 6-step sparse-token codes pretraining (its final metrics, workdir)."""
  w = str(tmp_path_factory.mktemp("codes_pre") / "full")
  return trainer.train_and_evaluate(codes_config(dataset), w), w


def test_codebook_is_fitted_once_saved_and_reused_on_resume(dataset, pretrained, tmp_path,
                                                            monkeypatch):
  final, full = pretrained
  centroids, record = codes.load(full)
  assert centroids.shape == (K, P * P * 3) and not centroids[0].any()  # row 0: empty patch
  assert record["jets"] == 24 and record["occupied_patches"] > K
  assert sum(record["code_counts"]) == record["occupied_patches"] + record["empty_patches"]
  assert record["inertia"][-1] < record["inertia"][0]
  for key in ("validation/masked_ce", "validation/masked_code_accuracy", "test/masked_ce",
              "test/masked_ce_predict_frequencies"):
    assert np.isfinite(final[key]), key
  assert os.path.exists(os.path.join(full, "reconstruction.png"))

  # stopped at step 3, resumed to 6: the saved codebook is read (never refitted) and the
  # run ends bit-identical to the uninterrupted one
  part = str(tmp_path / "part")
  trainer.train_and_evaluate(codes_config(dataset, total_steps=3, figures=False), part)
  np.testing.assert_array_equal(codes.load(part)[0], centroids)  # the fit is deterministic

  def refit(*a, **k):
    raise AssertionError("a resumed run refitted its codebook")
  monkeypatch.setattr(codes, "fit", refit)
  trainer.train_and_evaluate(codes_config(dataset, figures=False), part)
  rows = [r["loss"] for r in checkpoint.read_history(part)]
  assert rows == [r["loss"] for r in checkpoint.read_history(full)]
  a = checkpoint.read_arrays(full, 6, "params")[0]["params"]
  b = checkpoint.read_arrays(part, 6, "params")[0]["params"]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # a codebook fitted with other settings is not silently reused
  other = codes_config(dataset, total_steps=9, figures=False)
  other.task.codebook_jets = 30
  with pytest.raises(UsageError, match="was fitted with"):
    trainer.train_and_evaluate(other, part)
  other.task.target = "pixels"  # nor is a codes run continued on pixels
  with pytest.raises(UsageError, match="different 'task.target' \\(codes vs pixels\\)"):
    trainer.train_and_evaluate(other, part)


# sparse (the pretraining recipe's tokens) in the default suite; dense is `slow`
@pytest.mark.parametrize("tokens", [pytest.param("dense", marks=pytest.mark.slow), "sparse"])
def test_training_lowers_the_code_loss(dataset, tmp_path, tokens):
  c = codes_config(dataset, tokens, total_steps=30, warmup_steps=3, lr=1.5e-2, ckpt_every=100,
                   figures=False)
  c.data.eval_split = c.data.test_split = ""
  trainer.train_and_evaluate(c, str(tmp_path / "w"))
  rows = checkpoint.read_history(str(tmp_path / "w"))
  first, last = np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])
  assert last < 0.8 * first, (first, last)


def test_probe_loads_the_encoder_of_a_codes_pretraining(dataset, pretrained, tmp_path):
  """The decoder's pred layer is codebook_size wide, but only the encoder is loaded."""
  _, pre = pretrained
  c = load_config("probe", "variant=tiny,tokens=sparse", batch_size=8, total_steps=2,
                  warmup_steps=1, log_every=1, ckpt_every=1000)
  c.data.dir, c.model_init, c.task.bootstrap = dataset, pre, 10
  out = trainer.train_and_evaluate(c, str(tmp_path / "probe"))
  assert 0.0 <= out["test/auc"] <= 1.0
  enc = checkpoint.read_arrays(pre, item="params")[0]["params"]["encoder"]
  got = checkpoint.read_arrays(str(tmp_path / "probe"))[0]["params"]["backbone"]["encoder"]
  for x, y in zip(jax.tree.leaves(enc), jax.tree.leaves(got)):
    np.testing.assert_array_equal(x, y)


def test_reconstruction_decodes_codes_through_the_codebook(dataset, pretrained):
  """The protocol's reconstruction stage measures the argmax code's centroid, says so, and
  gives the codebook's own ceiling (the true codes' centroids) beside it."""
  from mae_jax.protocol import measure
  _, pre = pretrained
  config = codes_config(dataset)
  r, _ = measure.reconstruction(pre, config, ["test"])
  t = r["test"]
  assert t["decoded"] == "the argmax code's centroid"
  assert np.isfinite(t["mse_masked"]) and np.isfinite(t["skill_masked"])
  assert 0.0 < t["codebook_skill_masked"] <= 1.0 and t["codebook_skill_occupied"] <= 1.0
  json.dumps({k: v for k, v in t.items() if not isinstance(v, np.ndarray)})


def test_protocol_flag_reaches_the_pretrain_stage_only(tmp_path):
  """`--pretrain.task.target=codes` sets the pretrain stage's target (and codebook fields);
  the downstream stages keep theirs (they load the encoder only)."""
  from mae_jax import protocol
  from mae_jax.protocol import stages
  args, overrides, per_stage = protocol.parse_args(
      ["--data", str(tmp_path), "--root", str(tmp_path / "r"), "--pretrain.task.target=codes",
       "--pretrain.task.codebook_size=64"])
  cfg = {st: stages.stage_config(st, args, 0, None, overrides, per_stage, args.steps_by_stage)
         for st in ("pretrain", "probe", "finetune")}
  assert (cfg["pretrain"].task.target, cfg["pretrain"].task.codebook_size) == ("codes", 64)
  assert cfg["probe"].task.target == cfg["finetune"].task.target == "pixels"
  assert cfg["probe"].model_init == stages.run_dir(str(tmp_path / "r"), 0, None, "pretrain")
