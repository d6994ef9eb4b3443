"""Grouped convolutions (models/conv.py): the fast CPU paths equal lax's grouped conv, forward
and both gradients, and the modules have nn.Conv's parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax.models import conv


def _rand(shape, seed, sparse=False):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape).astype(np.float32)
  if sparse:  # detector-like: most pixels exactly zero
    x *= rng.random(shape) < 0.05
  return jnp.asarray(x)


def _value_and_grads(f, x, kernel):
  # a non-linear scalar so that every output element gets its own cotangent
  loss = lambda x, k: jnp.sum(jnp.sin(f(x, k)))  # noqa: E731
  return f(x, kernel), jax.grad(loss, argnums=(0, 1))(x, kernel)


def _close(a, b, rtol=1e-5):
  # tolerance relative to the largest entry: float32 sums of up to B*H*W products
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(np.abs(b).max(), 1e-30))


def _direct_equals_lax(op, x, kernel):
  """Output and both gradients of op(x, kernel, "direct") against op(x, kernel, "lax")."""
  got = _value_and_grads(lambda a, b: op(a, b, "direct"), x, kernel)
  want = _value_and_grads(lambda a, b: op(a, b, "lax"), x, kernel)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    _close(a, b)


@pytest.mark.parametrize("k, shape", [(5, (2, 13, 9, 6)), (3, (3, 8, 8, 4)), (5, (2, 25, 25, 40))])
def test_depthwise_direct_equals_lax_forward_and_gradients(k, shape):
  _direct_equals_lax(conv.depthwise_conv_same, _rand(shape, 0, sparse=True),
                     _rand((k, k, 1, shape[-1]), 1))


def test_depthwise_matches_a_float64_loop():
  x, kernel = _rand((1, 7, 6, 3), 2), _rand((3, 3, 1, 3), 3)
  xs, ks = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  xp = np.pad(xs, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = np.zeros_like(xs)
  for y in range(7):
    for xx in range(6):
      for c in range(3):
        ref[0, y, xx, c] = np.sum(xp[0, y:y + 3, xx:xx + 3, c] * ks[:, :, 0, c])
  np.testing.assert_allclose(conv.depthwise_conv_same(x, kernel, "direct"), ref, atol=1e-5)


@pytest.mark.parametrize("p, c, k", [(5, 8, 18), (5, 3, 2), (4, 2, 3)])
def test_patch_grouped_conv_einsum_equals_lax(p, c, k):
  _direct_equals_lax(conv.patch_grouped_conv, _rand((2, 5 * p, 3 * p, c), 4, sparse=True),
                     _rand((p, p, 1, c * k), 5))


def test_modules_have_nn_conv_parameters_and_outputs():
  x = _rand((2, 10, 10, 4), 6)
  key = jax.random.key(0)
  pairs = [(conv.DepthwiseConv(4, 5, impl="direct"),
            nn.Conv(4, (5, 5), padding="SAME", feature_group_count=4,
                    kernel_init=conv.conv_init())),
           (conv.PatchGroupedConv(12, 5, impl="direct"),
            nn.Conv(12, (5, 5), strides=5, padding="VALID", feature_group_count=4,
                    kernel_init=conv.conv_init()))]
  for ours, ref in pairs:
    p_ours, p_ref = ours.init(key, x), ref.init(key, x)
    assert jax.tree.structure(p_ours) == jax.tree.structure(p_ref)
    jax.tree.map(np.testing.assert_array_equal, p_ours, p_ref)  # same names, shapes, values
    p = jax.tree.map(lambda a: a + 0.1, p_ref)  # non-zero bias too
    _close(ours.apply(p, x), ref.apply(p, x))


def test_bfloat16_modules_follow_nn_conv():
  x = _rand((2, 10, 10, 4), 7)
  key = jax.random.key(1)
  for ours, ref in [(conv.DepthwiseConv(4, 5, dtype=jnp.bfloat16, impl="direct"),
                     nn.Conv(4, (5, 5), padding="SAME", feature_group_count=4,
                             kernel_init=conv.conv_init(), dtype=jnp.bfloat16)),
                    (conv.PatchGroupedConv(8, 5, dtype=jnp.bfloat16, impl="direct"),
                     nn.Conv(8, (5, 5), strides=5, padding="VALID", feature_group_count=4,
                             kernel_init=conv.conv_init(), dtype=jnp.bfloat16))]:
    p = ours.init(key, x)
    out, grads = ours.apply(p, x), jax.grad(lambda p: jnp.sum(ours.apply(p, x) ** 2))(p)
    assert out.dtype == jnp.bfloat16
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))  # float32 parameters
    ref_out = ref.apply(p, x)
    # bfloat16 has 8 bits of mantissa: 2^-7 of the largest entry, times a few roundings
    _close(out.astype(jnp.float32), ref_out.astype(jnp.float32), rtol=3e-2)


def test_even_depthwise_kernels_use_lax():
  x, kernel = _rand((1, 6, 6, 2), 8), _rand((4, 4, 1, 2), 9)
  np.testing.assert_array_equal(conv.depthwise_conv_same(x, kernel),
                                conv.depthwise_conv_same(x, kernel, "lax"))
  with pytest.raises(ValueError, match="needs an odd kernel"):
    conv.depthwise_conv_same(x, kernel, "direct")


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError, match=r"is not \[k, k, 1, 2\]"):
    conv.depthwise_conv_same(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 1, 3)))
  with pytest.raises(ValueError, match=r"\[p, p, 1, C\*k\]"):
    conv.patch_grouped_conv(jnp.zeros((1, 10, 10, 3)), jnp.zeros((5, 5, 1, 4)))
  with pytest.raises(ValueError, match="does not divide the image size 12x10"):
    conv.patch_grouped_conv(jnp.zeros((1, 12, 10, 3)), jnp.zeros((5, 5, 1, 6)))
  with pytest.raises(ValueError, match="choose one of"):
    conv.depthwise_conv_same(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 1, 2)), "cudnn")
