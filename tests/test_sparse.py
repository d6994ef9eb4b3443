"""Sparse-token MAE (models/sparse.py) and the pipeline's occupied-patch lists.

References: the dense ViT MAE's own encoder run on a jet's occupied tokens only (the
sparse encoder must equal it to 1e-5), numpy occupancy, float64 numpy losses.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import experiment, parallel
from mae_jax.data import pipeline as pipeline_lib
from mae_jax.models import mae as mae_lib
from mae_jax.models import sparse
from mae_jax.tasks import mae as mae_task
from mae_jax.tasks.targets import pixels
from helpers import converted_dataset, load_config, train_setup

RNGS = {"params": jax.random.key(0), "masking": jax.random.key(1)}


def sparse_jets(b=3, hw=25, c=3, seed=0):
  """Jets with 4, 7, 10, ... scattered non-zero pixels (different occupancies)."""
  rng = np.random.default_rng(seed)
  x = np.zeros((b, hw, hw, c), np.float32)
  for i in range(b):
    for _ in range(4 + 3 * i):
      r, q = rng.integers(0, hw, 2)
      x[i, r, q] = rng.exponential(2.0, c) * (rng.random(c) < 0.7)
  return jnp.asarray(x)


@pytest.fixture(scope="module")
def models():
  x = sparse_jets()
  sp = sparse.SparseMAE(variant="tiny", patch=5, channels=3)
  dense = mae_lib.MAE(variant="tiny", patch=5, channels=3)
  return sp, dense, sp.init(RNGS, x), x


def test_occupied_patch_ids_match_numpy(models):
  x = models[3]
  ids = np.asarray(sparse.occupied_patch_ids(x, 5, capacity=16))
  for b in range(x.shape[0]):
    want = sparse.occupied_patch_ids_np(np.asarray(x[b]), 5)
    assert list(ids[b][ids[b] >= 0]) == list(want) and np.all(ids[b][len(want):] == -1)


def test_same_parameters_as_the_dense_mae(models):
  sp, dense, variables, x = models
  want = jax.tree.map(np.asarray, dense.init(RNGS, x))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, variables), want)


def test_sparse_encoder_equals_dense_encoder_on_occupied_tokens(models):
  """Tolerance 1e-5: the same tokens through the same parameters (the patch embedding is a
  stride-p conv in one, a conv over each single patch in the other)."""
  sp, dense, variables, x = models
  ids = sparse.occupied_patch_ids(x, 5, capacity=24)
  feats = sp.apply(variables, x, patch_ids=ids, method=sp.encode)
  for b in range(x.shape[0]):
    n = int((ids[b] >= 0).sum())
    want = dense.apply(variables, x[b:b + 1], None, lambda t, b=b, n=n: t[:, ids[b, :n]],
                       method=lambda m, *a: m.encoder(*a))[0]
    np.testing.assert_allclose(np.asarray(feats["tokens"][b, :1 + n]), np.asarray(want),
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(feats["mean"][b]), np.asarray(want[1:].mean(0)),
                               rtol=0, atol=1e-5)
  assert feats["valid"].shape == (3, 25) and int(feats["valid"][0].sum()) == 1 + int(
      (ids[0] >= 0).sum())


def test_padding_and_batch_neighbours_change_nothing(models):
  """Tolerance 1e-6: a jet's loss terms, latent and prediction do not depend on how far its
  token list is padded nor on the other jets of the batch."""
  sp, _, variables, x = models
  noise = jax.random.uniform(jax.random.key(5), (3, 48))
  outs = {}
  for k in (16, 48):
    ids = sparse.occupied_patch_ids(x, 5, capacity=k)
    outs[k] = sp.apply(variables, x, noise=noise[:, :k], patch_ids=ids, train=False)
  alone = sp.apply(variables, x[2:], noise=noise[2:, :16],
                   patch_ids=sparse.occupied_patch_ids(x[2:], 5, capacity=16), train=False)
  for key in ("pred", "mask"):
    np.testing.assert_allclose(np.asarray(outs[48][1][key]), np.asarray(outs[16][1][key]),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(alone[1][key][0]), np.asarray(outs[16][1][key][2]),
                               rtol=0, atol=1e-6)
  loss = {k: float(mae_task.objective(pixels.Targets(5), outs[k], x)) for k in outs}
  np.testing.assert_allclose(loss[48], loss[16], rtol=1e-6)


def test_masking_counts_and_loss_against_float64(models):
  sp, _, variables, x = models
  ids = sparse.occupied_patch_ids(x, 5, capacity=16)
  out = sp.apply(variables, x, patch_ids=ids, rngs={"masking": jax.random.key(2)})
  loss, aux = mae_task.objective(pixels.Targets(5), out, x), out[1]
  n = np.asarray((ids >= 0).sum(1))
  visible = np.maximum(1, np.floor(n * 0.25)).astype(int)
  np.testing.assert_array_equal(np.asarray(aux["visible"]), visible)
  np.testing.assert_array_equal(np.asarray(aux["mask"]).sum(1), n - visible)
  mask = np.asarray(aux["mask"], bool)
  occupied = np.zeros_like(mask)
  for b in range(3):
    occupied[b, np.asarray(ids[b][ids[b] >= 0])] = True
  assert not np.any(mask & ~occupied)  # only occupied patches are masked (and reconstructed)
  err = (np.asarray(aux["pred"], np.float64) - np.asarray(mae_lib.patchify(x, 5), np.float64)) ** 2
  want = err.mean(-1)[mask].mean()
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_masked_pixel_values_cannot_reach_the_latent(models):
  """Leak test: changing the pixels of masked patches leaves latent and prediction
  bit-identical, and their gradient with respect to those pixels is exactly 0."""
  sp, _, variables, x = models
  ids = sparse.occupied_patch_ids(x, 5, capacity=16)
  noise = jax.random.uniform(jax.random.key(7), (3, 16))
  run = lambda im: sp.apply(variables, im, noise=noise, patch_ids=ids, train=False)[1]  # noqa
  aux = run(x)
  pix_mask = mae_lib.unpatchify(jnp.repeat(aux["mask"][:, :, None], 75, -1), 5, (5, 5), 3)
  x2 = x + pix_mask * 5.0
  aux2 = run(x2)
  np.testing.assert_array_equal(np.asarray(aux2["latent"]), np.asarray(aux["latent"]))
  np.testing.assert_array_equal(np.asarray(aux2["pred"]), np.asarray(aux["pred"]))
  g = jax.grad(lambda im: run(im)["latent"].sum())(x)
  assert float(jnp.abs(g * pix_mask).max()) == 0.0 and float(jnp.abs(g).max()) > 0


def test_empty_queries_are_masked_empty_patches(models):
  _, _, variables, x = models
  sp = sparse.SparseMAE(variant="tiny", patch=5, channels=3, empty_queries=4)
  ids = sparse.occupied_patch_ids(x, 5, capacity=16)
  out = sp.apply(variables, x, patch_ids=ids, rngs={"masking": jax.random.key(2)})
  loss, aux = mae_task.objective(pixels.Targets(5), out, x), out[1]
  mask, target = np.asarray(aux["mask"], bool), np.asarray(mae_lib.patchify(x, 5))
  n = np.asarray((ids >= 0).sum(1))
  np.testing.assert_array_equal(mask.sum(1), n - np.asarray(aux["visible"]) + 4)
  empty_masked = mask & ~np.any(target != 0, axis=-1)
  assert np.all(empty_masked.sum(1) == 4) and np.isfinite(float(loss))


def test_sharded_sparse_step_equals_single_device_and_learns():
  """1 vs 8 fake devices: the same losses (1e-5) on a batch whose token lists are padded."""
  x = np.asarray(sparse_jets(8, seed=3))
  ids = np.asarray(sparse.occupied_patch_ids(jnp.asarray(x), 5, capacity=16))
  config = load_config(batch_size=8, total_steps=20, warmup_steps=2, lr=0.05)
  config.model.tokens = "sparse"
  losses = {}
  for n_dev in (1, 8):
    mesh = parallel.make_mesh([("data", -1)], jax.devices()[:n_dev])
    _, setup, step = train_setup(config, (25, 25, 3), mesh)
    state, out = setup.state, []
    for _ in range(8):
      state, m = step(state, parallel.global_batch({"image": x, "patch_ids": ids}, mesh))
      out.append(float(m["loss"]))
    losses[n_dev] = out
  np.testing.assert_allclose(losses[8], losses[1], rtol=1e-5)
  assert losses[1][-1] < 0.7 * losses[1][0], losses[1]


def test_bucket_lengths():
  assert [pipeline_lib.bucket_length(n) for n in (0, 1, 16, 17, 128, 129, 160, 257, 625)] == [
      16, 16, 16, 32, 128, 160, 160, 320, 640]


def test_pipeline_token_lists_buckets_and_few_compilations(tmp_path):
  """The pipeline's patch_ids equal numpy's on the raw images (normalisation may move 0),
  are padded to bucket lengths, and the jitted train step compiles once per bucket length,
  not once per batch."""
  data = converted_dataset(tmp_path, n=(64, 16, 16))
  config = load_config(batch_size=8, total_steps=40, warmup_steps=2, lr=1e-3)
  config.model.tokens, config.data.dir = "sparse", data
  config.data.normalization, config.data.token_bucket, config.data.sort_window = "zscore", 4, 2
  pipe = experiment.make_pipeline(config)
  raw = pipeline_lib.Pipeline(data, "none")
  _, it = raw.eval_iter("train", 8, 8)
  images = np.concatenate([b["image"] for b in it])
  want = {tuple(sparse.occupied_patch_ids_np(im, 5)) for im in images}
  mesh = parallel.make_mesh([("data", -1)])
  _, setup, step = train_setup(config, pipe.image_shape, mesh)
  state, lengths, seen = setup.state, set(), set()
  batches = pipe.train_iter("train", 8, seed=0)
  for _ in range(16):
    batch = next(batches)
    ids = batch["patch_ids"]
    lengths.add(ids.shape[1])
    assert ids.shape[1] % 4 == 0 and ids.shape[1] - (ids >= 0).sum(1).max() < 4
    for row in ids:
      seen.add(tuple(row[row >= 0]))
    state, _ = step(state, parallel.global_batch(batch, mesh))
  assert seen <= want and len(lengths) >= 2
  assert step._cache_size() == len(lengths)  # one compilation per bucket length


def test_sorted_windows_resume_exactly(tmp_path):
  data = converted_dataset(tmp_path, n=(64, 16, 16))
  pipe = pipeline_lib.Pipeline(data, "log1p", tokens=pipeline_lib.Tokens(5, 4, sort_window=3))
  full = pipe.train_iter("train", 4, seed=1)
  want = [next(full) for _ in range(8)]
  resumed = pipe.train_iter("train", 4, seed=1, start_step=5)
  for k in range(5, 8):
    got = next(resumed)
    for key in want[k]:
      np.testing.assert_array_equal(got[key], want[k][key])
  # each window's batches are consecutive slices of its jets sorted by occupancy: their
  # occupancy ranges do not overlap (ties aside)
  for w in range(2):
    counts = sorted(((b["patch_ids"] >= 0).sum(1) for b in want[3 * w:3 * w + 3]),
                    key=lambda c: c.min())
    assert all(a.max() <= b.min() for a, b in zip(counts, counts[1:])), counts
