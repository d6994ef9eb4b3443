"""Heads and losses: pooling, affine-free BatchNorm, losses vs float64 numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax.models import heads

B, N, D = 6, 9, 8


def tokens(seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(B, 1 + N, D)), jnp.float32)


@pytest.mark.parametrize("pool,include_cls", [("cls", False), ("mean", False), ("max", False),
                                              ("mean", True), ("max", True)])
def test_pooling(pool, include_cls):
  t = tokens()
  x = np.asarray(t, np.float64)
  ref = {("cls", False): x[:, 0], ("mean", False): x[:, 1:].mean(1), ("max", False): x[:, 1:].max(1),
         ("mean", True): x.mean(1), ("max", True): x.max(1)}[(pool, include_cls)]
  np.testing.assert_allclose(heads.pool_tokens(t, pool, include_cls), ref, rtol=1e-6, atol=1e-6)
  head = heads.ClassifierHead(num_outputs=3, pool=pool, include_cls=include_cls)
  variables = head.init(jax.random.key(0), t)
  assert set(variables) == {"params"}
  out = head.apply(variables, t)
  assert out.shape == (B, 3)
  w = np.asarray(variables["params"]["dense"]["kernel"], np.float64)
  np.testing.assert_allclose(out, ref @ w, rtol=1e-5, atol=1e-6)


def test_mean_pool_matches_mae_encode_convention():
  # MAE.encode's "mean" excludes CLS; the head's default does too.
  t = tokens(1)
  np.testing.assert_allclose(heads.pool_tokens(t, "mean"), t[:, 1:].mean(1))
  with pytest.raises(ValueError, match="pool must be"):
    heads.ClassifierHead(pool="avg").init(jax.random.key(0), t)
  with pytest.raises(ValueError, match="CLS token first"):
    heads.pool_tokens(t[:, 0], "cls")


def test_bn_head_has_no_affine_and_updates_stats_only_in_train():
  t = tokens(2) * 3.0 + 1.0
  head = heads.ClassifierHead(num_outputs=1, pool="mean", bn=True)
  variables = head.init(jax.random.key(0), t)
  assert "bn" not in variables["params"]  # use_scale=False, use_bias=False
  assert set(variables["params"]) == {"dense"}
  stats = variables["batch_stats"]["bn"]
  np.testing.assert_array_equal(stats["mean"], 0.0)
  out, upd = head.apply(variables, t, train=True, mutable=["batch_stats"])
  pooled = np.asarray(t, np.float64)[:, 1:].mean(1)
  np.testing.assert_allclose(upd["batch_stats"]["bn"]["mean"], 0.1 * pooled.mean(0), rtol=1e-5, atol=1e-6)
  # train mode normalises with batch statistics (no affine): check against numpy
  normed = (pooled - pooled.mean(0)) / np.sqrt(pooled.var(0) + 1e-6)
  w = np.asarray(variables["params"]["dense"]["kernel"], np.float64)
  np.testing.assert_allclose(out, normed @ w, rtol=1e-4, atol=1e-5)
  # eval mode uses the running stats and does not change them
  out_eval, upd_eval = head.apply(variables, t, train=False, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, upd_eval["batch_stats"], variables["batch_stats"])
  assert out_eval.shape == (B, 1)


def np_bce(x, y, eps=0.0):
  x = np.asarray(x, np.float64).reshape(-1)
  y = np.asarray(y, np.float64).reshape(-1) * (1 - eps) + eps / 2
  p = 1 / (1 + np.exp(-x))
  return np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_bce_matches_numpy_and_shapes(smoothing):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(B, 1)) * 3
  labels = rng.integers(0, 2, B)  # [B] int labels with a [B, 1] one-unit head
  ref = np_bce(logits, labels, smoothing)
  for lg, lb in ((logits, labels), (logits[:, 0], labels), (logits, labels[:, None]),
                 (logits[:, 0], labels.astype(bool)), (logits, labels.astype(np.float32))):
    got = heads.binary_cross_entropy_with_logits(jnp.asarray(lg, jnp.float32), lb, smoothing)
    assert got.shape == ()
    assert float(got) == pytest.approx(ref, rel=1e-5)


def test_bce_one_unit_head_regression_of_reference_bug():
  """A [B] int label with a [B, 1] logit must give the per-sample BCE, not a [B, B] broadcast
  and not an index into a one-hot that a one-unit head does not have."""
  logits = jnp.asarray([[2.0], [-1.0], [0.5]])
  labels = jnp.asarray([1, 0, 0])
  expect = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0)), np.log1p(np.exp(0.5))])
  assert float(heads.binary_cross_entropy_with_logits(logits, labels)) == pytest.approx(expect, rel=1e-6)
  with pytest.raises(ValueError, match="one-hot"):
    heads.binary_cross_entropy_with_logits(logits, jax.nn.one_hot(labels, 2))
  with pytest.raises(ValueError, match="does not match"):
    heads.binary_cross_entropy_with_logits(logits, labels[:2])


def test_bce_is_stable_for_large_logits():
  x = jnp.asarray([100.0, -100.0, 100.0])
  y = jnp.asarray([1, 0, 0])
  assert float(heads.binary_cross_entropy_with_logits(x, y)) == pytest.approx(100.0 / 3, rel=1e-6)
  g = jax.grad(lambda z: heads.binary_cross_entropy_with_logits(z, y))(x)
  assert np.all(np.isfinite(g))


def test_mse_and_huber_match_numpy():
  rng = np.random.default_rng(1)
  pred = rng.normal(size=(B, 1)) * 2
  target = rng.normal(size=B)
  d = pred[:, 0] - target
  assert float(heads.mse(pred, target)) == pytest.approx(np.mean(d ** 2), rel=1e-5)
  for delta in (0.5, 1.0, 3.0):
    a = np.abs(d)
    ref = np.mean(np.where(a <= delta, 0.5 * d ** 2, delta * (a - 0.5 * delta)))
    assert float(heads.huber(pred, target, delta)) == pytest.approx(ref, rel=1e-5)
  # multi-target regression [B, 2] (mass, pT)
  p2 = rng.normal(size=(B, 2))
  t2 = rng.normal(size=(B, 2))
  assert float(heads.mse(p2, t2)) == pytest.approx(np.mean((p2 - t2) ** 2), rel=1e-5)
  with pytest.raises(ValueError, match="does not match"):
    heads.mse(p2, target)  # [B, 2] vs [B]
  with pytest.raises(ValueError, match="delta"):
    heads.huber(pred, target, 0.0)
