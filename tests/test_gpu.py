"""GPU-only checks, run by launch/gpu_check.sh (`pytest -m gpu`); skipped without a CUDA GPU.

cuDNN's fused attention against XLA's at the e2e-base shapes (bfloat16, with and without
key padding), the `auto` choice per dtype, and one bfloat16 train step of the tiny MAE
against float32. Tolerances are bfloat16's: 8 mantissa bits, so ~1e-2 of the largest
magnitude for attention outputs and gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import load_config, train_setup
from mae_jax.models import attention


def _gpu_count() -> int:
  try:
    return len(jax.devices("gpu"))
  except RuntimeError:  # no CUDA backend (tests/conftest.py defaults JAX_PLATFORMS to cpu)
    return 0


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(_gpu_count() == 0,
                                 reason="no GPU visible to JAX (run with JAX_PLATFORMS=cuda)")]

BF16_TOL = 2e-2


def rel_err(got, want):
  got, want = (np.asarray(x, np.float32) for x in (got, want))
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def out_and_grads(impl, q, k, v, lengths=None):
  def loss(q, k, v):
    o = attention.dot_product_attention(q, k, v, impl=impl, lengths=lengths)
    return jnp.sum(o.astype(jnp.float32) ** 2), o
  (_, o), g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return (o,) + g


@pytest.mark.parametrize("t,h,d", [(158, 12, 64), (626, 8, 16)], ids=["encoder", "decoder"])
@pytest.mark.parametrize("padded", [False, True])
def test_cudnn_matches_xla_in_bfloat16(t, h, d, padded):
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (16, t, h, d), jnp.bfloat16) for key in keys)
  lengths = (jnp.arange(16) * 37) % t + 1 if padded else None
  cudnn = out_and_grads("cudnn", q, k, v, lengths)
  xla = out_and_grads("xla", *(x.astype(jnp.float32) for x in (q, k, v)), lengths=lengths)
  assert cudnn[0].dtype == jnp.bfloat16
  for got, want in zip(cudnn, xla):
    assert rel_err(got, want) < BF16_TOL


def test_auto_picks_cudnn_for_bfloat16_and_xla_for_float32():
  assert attention.resolve("auto", jnp.bfloat16) == "cudnn"
  assert attention.resolve("auto", jnp.float32) == "xla"


def test_bfloat16_train_step_matches_float32():
  from mae_jax import parallel
  from mae_jax.bench import sparse_batch
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = load_config(batch_size=16)
    config.model.dtype = dtype
    mesh = parallel.make_mesh(config.mesh)
    _, setup, step = train_setup(config, (125, 125, 8), mesh)
    batch = parallel.global_batch({"image": sparse_batch(16)}, mesh)
    _, metrics = step(setup.state, batch)
    losses[dtype] = float(jax.device_get(metrics["loss"]))
  assert np.isfinite(losses["bfloat16"])
  assert abs(losses["bfloat16"] - losses["float32"]) < 0.05 * abs(losses["float32"])
