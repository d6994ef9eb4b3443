"""Reconstruction metrics: per-batch sums vs float64 numpy loops, exact accumulation."""

import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax.evaluate import reconstruction as rec
from mae_jax.models import mae as mae_lib
from mae_jax.tasks import mae as mae_task

P = 5


def make_batch(seed, b=4, hw=(10, 15), c=3, density=0.1):
  """Sparse non-negative images, a noisy prediction and a random mask (some jets fully visible
  in a channel's masked area so that the energy skip path is exercised)."""
  rng = np.random.default_rng(seed)
  h, w = hw
  images = rng.exponential(1.0, (b, h, w, c)) * (rng.random((b, h, w, c)) < density)
  images[0, :, :, 1] = 0.0  # a jet with no energy at all in channel 1
  n = (h // P) * (w // P)
  target = np.asarray(mae_lib.patchify(jnp.asarray(images, jnp.float32), P), np.float64)
  pred = target + 0.3 * rng.normal(size=target.shape)
  mask = (rng.random((b, n)) < 0.6).astype(np.float32)
  mask[:, 0] = 1.0  # at least one masked patch per jet
  return images.astype(np.float32), pred.astype(np.float32), mask


def numpy_reference(images, pred, mask):
  """Straight float64 loops over jets / patches / pixels in image space."""
  images = images.astype(np.float64)
  b, h, w, c = images.shape
  gw = w // P
  recon = np.zeros_like(images)
  pix_mask = np.zeros(images.shape[:3])
  for k in range(pred.shape[1]):
    i, j = divmod(k, gw)
    recon[:, i * P:(i + 1) * P, j * P:(j + 1) * P, :] = pred[:, k].astype(np.float64).reshape(b, P, P, c)
    pix_mask[:, i * P:(i + 1) * P, j * P:(j + 1) * P] = mask[:, k][:, None, None]
  m = np.repeat(pix_mask[..., None], c, axis=-1) > 0.5
  err = (recon - images) ** 2
  occ = m & (images != 0)
  emp = m & (images == 0)
  ref = {
      "mse_masked": err[m].mean(), "mse_masked_zeros": (images[m] ** 2).mean(),
      "mse_all": err.mean(), "mse_all_zeros": (images ** 2).mean(),
      "mse_occupied": err[occ].mean(), "mse_occupied_zeros": (images[occ] ** 2).mean(),
      "mse_empty": err[emp].mean(),
      "mse_masked_per_channel": np.array([err[..., ch][m[..., ch]].mean() for ch in range(c)]),
      "mse_occupied_per_channel": np.array([err[..., ch][occ[..., ch]].mean() for ch in range(c)]),
  }
  rels = [[] for _ in range(c)]
  e_true_tot = np.zeros(c)
  e_rec_tot = np.zeros(c)
  for jet in range(b):
    for ch in range(c):
      sel = m[jet, :, :, ch]
      et = images[jet, :, :, ch][sel].sum()
      er = recon[jet, :, :, ch][sel].sum()
      e_true_tot[ch] += et
      e_rec_tot[ch] += er
      if et > 0:
        rels[ch].append((er - et) / et)
  ref["energy_rel_mean"] = np.array([np.mean(r) for r in rels])
  ref["energy_rel_std"] = np.array([np.std(r) for r in rels])
  ref["energy_ratio"] = e_rec_tot / e_true_tot
  ref["energy_jets"] = np.array([len(r) for r in rels])
  return ref


def check_against_reference(out, ref, rtol=1e-5):
  for k, v in ref.items():
    np.testing.assert_allclose(out[k], v, rtol=rtol, atol=1e-6, err_msg=k)


def test_sums_match_numpy_reference():
  images, pred, mask = make_batch(0)
  out = rec.finalize(rec.accumulate(None, rec.reconstruction_sums(images, pred, mask, P)))
  ref = numpy_reference(images, pred, mask)
  check_against_reference(out, ref)
  assert out["n_jets"] == 4
  assert out["energy_skipped"][1] >= 1  # jet 0 has no channel-1 energy
  assert 0 < out["occupied_fraction"] < 0.3
  assert out["skill_masked"] == pytest.approx(1 - ref["mse_masked"] / ref["mse_masked_zeros"], rel=1e-5)


def test_accumulation_over_batches_is_exact_and_jit_matches():
  batches = [make_batch(s, b=b) for s, b in ((1, 3), (2, 1), (3, 5))]
  total = rec.init_sums(3)
  for images, pred, mask in batches:
    total = rec.accumulate(total, rec.reconstruction_sums_jit(images, pred, mask, patch=P))
  out = rec.finalize(total)
  cat = [np.concatenate(x) for x in zip(*batches)]
  whole = rec.finalize(rec.accumulate(None, rec.reconstruction_sums(*cat, P)))
  ref = numpy_reference(*cat)
  check_against_reference(out, ref)
  for k in ref:
    np.testing.assert_allclose(out[k], whole[k], rtol=1e-6, err_msg=k)
  assert out["n_jets"] == 9


def test_predicting_zeros_has_no_skill():
  images, pred, mask = make_batch(4)
  out = rec.finalize(rec.accumulate(None, rec.reconstruction_sums(images, np.zeros_like(pred), mask, P)))
  assert out["mse_masked"] == pytest.approx(out["mse_masked_zeros"], rel=1e-6)
  assert out["skill_masked"] == pytest.approx(0.0, abs=1e-6)
  assert out["skill_occupied"] == pytest.approx(0.0, abs=1e-6)
  assert out["mse_empty"] == 0.0
  np.testing.assert_allclose(out["energy_rel_mean"], -1.0)
  np.testing.assert_allclose(out["energy_rel_std"], 0.0, atol=1e-7)
  # exact prediction: zero error, full skill, perfect energy
  target = np.asarray(mae_lib.patchify(jnp.asarray(images), P))
  out = rec.finalize(rec.accumulate(None, rec.reconstruction_sums(images, target, mask, P)))
  assert out["mse_masked"] == 0.0 and out["skill_masked"] == 1.0
  np.testing.assert_allclose(out["energy_ratio"], 1.0, rtol=1e-6)


def test_masked_mse_equals_mae_loss():
  """Same number as the MAE training loss (tasks/mae.py masked_mse, norm_pix_loss=False)."""
  images, pred, mask = make_batch(5)
  loss = mae_task.masked_mse(jnp.asarray(pred), mae_lib.patchify(jnp.asarray(images), P), jnp.asarray(mask))
  out = rec.finalize(rec.accumulate(None, rec.reconstruction_sums(images, pred, mask, P)))
  assert out["mse_masked"] == pytest.approx(float(loss), rel=1e-5)


def test_denormalize_pred_inverts_norm_pix():
  images = make_batch(6)[0]
  t = np.asarray(mae_lib.patchify(jnp.asarray(images), P), np.float64)
  normed = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True, ddof=1) + 1e-6)
  np.testing.assert_allclose(rec.denormalize_pred(normed, images, P), t, atol=1e-5)


def test_bad_shapes_raise():
  images, pred, mask = make_batch(7)
  with pytest.raises(ValueError, match="pred must be"):
    rec.reconstruction_sums(images, pred[:, :, :-1], mask, P)
  with pytest.raises(ValueError, match="mask must be"):
    rec.reconstruction_sums(images, pred, mask[:, :-1], P)
  with pytest.raises(ValueError, match="does not divide"):
    rec.reconstruction_sums(images, pred, mask, 4)
