"""The CPU attention kernel (kernels/cpu_attention.*) and the attention dispatcher.

Reference: softmax attention and its backward written out in float64 numpy.
Tolerance: float32 kernel vs float64 reference within 2e-5 of the largest
magnitude of each compared array (the kernel's exp has ~1e-7 relative error and
sums over up to 157 keys here).
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mae_jax.kernels import cpu_attention
from mae_jax.models import attention, mae
from mae_jax.tasks import mae as mae_task
from mae_jax.tasks.targets import pixels

TOL = 2e-5


def reference(q, k, v, do, scale, lengths=None):
  """float64 forward and backward of softmax(q k^T * scale) v per (batch, head).

  `lengths` [B]: key padding (keys j >= lengths[b] excluded); where lengths[b] < Tk the
  query rows t >= lengths[b] are padding: output 0, no gradient (models.attention).
  """
  q, k, v, do = (np.asarray(x, np.float64) for x in (q, k, v, do))
  if lengths is not None:
    real_q = np.array([[t < n or n >= k.shape[1] for t in range(q.shape[1])] for n in lengths])
    do = do * real_q[:, :, None, None]
  s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  if lengths is not None:
    s = np.where(np.arange(k.shape[1])[None, None, None, :] < np.asarray(lengths)[:, None, None,
                                                                                  None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  o = np.einsum("bhqk,bkhd->bqhd", p, v)
  dv = np.einsum("bhqk,bqhd->bkhd", p, do)
  dp = np.einsum("bqhd,bkhd->bhqk", do, v)
  ds = p * (dp - np.sum(dp * p, -1, keepdims=True))
  dq = np.einsum("bhqk,bkhd->bqhd", ds, k) * scale
  dk = np.einsum("bhqk,bqhd->bkhd", ds, q) * scale
  if lengths is not None:
    o = o * real_q[:, :, None, None]
    dq = dq * real_q[:, :, None, None]
  return o, (dq, dk, dv)


def close(got, want, tol=TOL):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  err = np.max(np.abs(got - want))
  assert err <= tol * np.max(np.abs(want)), (err, np.max(np.abs(want)))


def inputs(b, tq, tk, h, d, seed=0, amplitude=1.0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = amplitude * jax.random.normal(keys[0], (b, tq, h, d))
  k = amplitude * jax.random.normal(keys[1], (b, tk, h, d))
  v = jax.random.normal(keys[2], (b, tk, h, d))
  do = jax.random.normal(keys[3], (b, tq, h, d))
  return q, k, v, do


def kernel_and_grads(q, k, v, do):
  out, vjp = jax.vjp(jax.jit(cpu_attention.attention), q, k, v)
  return out, vjp(do)


@pytest.mark.parametrize("b,tq,tk,h,d", [
    (2, 37, 37, 3, 16),   # tokens not a multiple of the 4-row / 32-column blocks
    (1, 1, 1, 1, 16),     # a single token
    (2, 21, 21, 2, 8),    # generic head size (no vector fast path)
    (2, 19, 19, 2, 12),
    (3, 19, 19, 2, 32),
    (1, 40, 40, 2, 64),
    (2, 157, 157, 2, 16),  # the e2e-base encoder's token count
    (2, 9, 50, 2, 16),    # cross-attention: fewer queries than keys
])
def test_forward_and_backward_match_float64_reference(b, tq, tk, h, d):
  q, k, v, do = inputs(b, tq, tk, h, d)
  out, grads = kernel_and_grads(q, k, v, do)
  ref_out, ref_grads = reference(q, k, v, do, d**-0.5)
  close(out, ref_out)
  for g, r in zip(grads, ref_grads):
    close(g, r)


@pytest.mark.parametrize("impl", ["cpu_kernel", "xla"])
@pytest.mark.parametrize("b,t,h,d,lengths", [
    (3, 37, 2, 16, [37, 5, 1]),     # full, padded, a single real token (CLS only)
    (2, 64, 2, 32, [33, 64]),
    (2, 21, 2, 8, [20, 3]),          # generic head size
])
def test_key_padding_matches_float64_reference(impl, b, t, h, d, lengths):
  """The key-padding mask of the sparse-token MAE, every backend against float64 numpy:
  padded keys get no weight, padded query rows output 0 and receive no gradient, and the
  values of padded tokens change nothing."""
  q, k, v, do = inputs(b, t, t, h, d, seed=3)
  n = jnp.asarray(lengths, jnp.int32)
  fn = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, impl=impl, lengths=n))
  out, vjp = jax.vjp(fn, q, k, v)
  ref_out, ref_grads = reference(q, k, v, do, d**-0.5, lengths)
  close(out, ref_out)
  for g, r in zip(vjp(do), ref_grads):
    close(g, r)
  # garbage in the padded rows of q, k, v does not reach the real rows
  pad = (jnp.arange(t)[None, :, None, None] >= n[:, None, None, None])
  noisy = [jnp.where(pad, 1e3 * jax.random.normal(jax.random.key(9), x.shape), x)
           for x in (q, k, v)]
  real = ~pad
  np.testing.assert_allclose(np.asarray(jnp.where(real, fn(*noisy), 0)),
                             np.asarray(jnp.where(real, out, 0)), rtol=0, atol=1e-6)


def test_other_block_width_matches_float64_reference(tmp_path):
  """The kernel's inner blocks are 16 floats wide with AVX-512 and 8 without; the tests
  above check this CPU's width. Force the other one (MAE_JAX_KERNEL_LANES, a fresh kernel
  cache) and rerun the float64 checks, so both code paths are tested on any machine
  (16 lanes on an AVX2 CPU compile to two-register values: slow, still correct)."""
  lanes = "8" if " avx512f" in cpu_attention._cpu_signature() else "16"
  env = dict(os.environ, MAE_JAX_KERNEL_CACHE=str(tmp_path), MAE_JAX_KERNEL_LANES=lanes)
  out = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
       "test_forward_and_backward_match_float64_reference or "
       "(test_key_padding_matches_float64_reference and cpu_kernel)"],
      env=env, capture_output=True, text=True, cwd=os.path.dirname(__file__))
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
  assert re.search(r"\b11 passed", out.stdout), out.stdout[-1000:]
  built = [f for f in os.listdir(tmp_path) if f.endswith(".so")]
  assert len(built) == 1, built  # the forced width was compiled here, not reused


def test_bad_lane_override_is_a_clear_error(tmp_path):
  code = ("from mae_jax.kernels import cpu_attention\n"
          "try:\n  cpu_attention.build()\nexcept cpu_attention.KernelUnavailable as e:\n"
          "  print('ERROR', e)\n")
  env = dict(os.environ, MAE_JAX_KERNEL_CACHE=str(tmp_path), MAE_JAX_KERNEL_LANES="4")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert "ERROR MAE_JAX_KERNEL_LANES='4'; choose 8 or 16" in out.stdout, out.stderr[-2000:]


def test_large_logits_stay_finite_and_exact():
  # Scores up to ~1e3: a naive exp overflows; the max-shifted kernel must not.
  q, k, v, do = inputs(2, 33, 33, 2, 16, seed=1, amplitude=8.0)
  out, grads = kernel_and_grads(q, k, v, do)
  assert np.isfinite(np.asarray(out)).all()
  ref_out, ref_grads = reference(q, k, v, do, 16**-0.5)
  close(out, ref_out)
  for g, r in zip(grads, ref_grads):
    close(g, r, tol=1e-4)  # near one-hot softmax: larger relative round-off in dS


def test_matches_xla_attention_and_custom_scale():
  q, k, v, _ = inputs(2, 30, 30, 4, 16, seed=2)
  close(cpu_attention.attention(q, k, v), jax.nn.dot_product_attention(q, k, v))
  close(cpu_attention.attention(q, k, v, scale=0.3), jax.nn.dot_product_attention(q, k, v, scale=0.3))


def test_bfloat16_inputs_compute_in_float32_and_keep_dtype():
  q, k, v, _ = inputs(2, 20, 20, 2, 16, seed=3)
  qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
  out = cpu_attention.attention(qb, kb, vb)
  assert out.dtype == jnp.bfloat16
  ref, _ = reference(qb.astype(jnp.float32), kb.astype(jnp.float32), vb.astype(jnp.float32),
                     np.zeros(q.shape), 16**-0.5)
  close(out, ref, tol=1e-2)  # bfloat16 output rounding


def test_bad_shapes_are_clear_errors():
  q, k, v, _ = inputs(1, 4, 4, 2, 16)
  with pytest.raises(ValueError, match=r"q \[B, Tq, H, D\]"):
    cpu_attention.attention(q[0], k[0], v[0])
  with pytest.raises(ValueError, match="attention expects"):
    cpu_attention.attention(q, k[..., :8], v)
  with pytest.raises(ValueError, match="model.attention='flash'"):
    attention.dot_product_attention(q, k, v, impl="flash")


def test_batch_sharded_inputs_run_per_device_without_gathering():
  """Over 8 devices each device runs the kernel on its batch shard: no collectives."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  q, k, v, do = inputs(8, 20, 20, 2, 16, seed=5)
  spec = NamedSharding(mesh, P("data"))
  sq, sk, sv, sdo = (jax.device_put(x, spec) for x in (q, k, v, do))

  def loss(q, k, v, do):
    return jnp.sum(cpu_attention.attention(q, k, v) * do)

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  hlo = fn.lower(sq, sk, sv, sdo).compile().as_text()
  for collective in ("all-gather", "all-to-all", "collective-permute"):
    assert collective not in hlo, collective
  value, grads = fn(sq, sk, sv, sdo)
  ref_out, ref_grads = reference(q, k, v, do, 16**-0.5)
  np.testing.assert_allclose(float(value), np.sum(ref_out * np.asarray(do)), rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    assert g.sharding.spec[0] == "data"
    close(g, r)


def test_mae_loss_and_gradients_agree_between_kernel_and_xla():
  images = jax.random.uniform(jax.random.key(0), (4, 25, 25, 3))
  noise = jax.random.uniform(jax.random.key(1), (4, 25))
  results = {}
  for impl in ("xla", "cpu_kernel"):
    model = mae.MAE(variant="tiny", patch=5, channels=3, attention=impl)
    params = model.init(jax.random.key(2), images, noise)["params"]  # same key: same weights
    loss_fn = lambda p: mae_task.objective(  # noqa: E731
        pixels.Targets(5), model.apply({"params": p}, images, noise), images)
    results[impl] = jax.value_and_grad(loss_fn)(params)
  (l_xla, g_xla), (l_k, g_k) = results["xla"], results["cpu_kernel"]
  np.testing.assert_allclose(float(l_k), float(l_xla), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_k), jax.tree.leaves(g_xla)):
    close(a, b, tol=1e-4)  # gradients through 3 blocks of float32 round-off


def test_auto_picks_the_kernel_on_cpu():
  assert jax.default_backend() == "cpu"
  assert attention.resolve("auto", jnp.float32) == "cpu_kernel"
  assert attention.resolve("xla", jnp.float32) == "xla"


def test_missing_compiler_falls_back_to_xla_with_a_reason(tmp_path):
  # Fresh process, empty kernel cache and no usable compiler.
  code = (
      "import jax, jax.numpy as jnp\n"
      "from mae_jax.kernels import cpu_attention\n"
      "from mae_jax.models import attention\n"
      "assert not cpu_attention.available()\n"
      "assert attention.resolve('auto', jnp.float32) == 'xla'\n"
      "q = jnp.ones((1, 3, 1, 16))\n"
      "print(attention.dot_product_attention(q, q, q).shape)\n"
      "try:\n"
      "  cpu_attention.attention(q, q, q)\n"
      "except cpu_attention.KernelUnavailable as e:\n"
      "  print('ERROR', e)\n")
  env = dict(os.environ, MAE_JAX_KERNEL_CACHE=str(tmp_path), CXX="/bin/false",
             PATH=str(tmp_path))  # nothing on PATH: no g++/c++/clang++
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert "(1, 3, 1, 16)" in out.stdout
  assert "ERROR" in out.stdout and "compil" in out.stdout
  assert "using XLA attention" in out.stderr


def test_kernel_steps_hit_the_persistent_compilation_cache(tmp_path):
  """custom_partitioning puts a Python address into the HLO; unless it is dropped from the
  cache key, every process compiles the kernel's steps afresh. Two processes compile the same
  forward + backward: the second must find the first's entry (one file, and a cache hit)."""
  code = (
      "import jax, jax.numpy as jnp\n"
      "jax.config.update('jax_num_cpu_devices', 2)\n"  # one device: no partitioning call
      "from mae_jax.kernels import cpu_attention\n"
      "def kernel_cache_probe(q):\n"
      "  return jax.grad(lambda q: cpu_attention.attention(q, q, q).sum())(q)\n"
      "mesh = jax.make_mesh((2,), ('data',))\n"
      "q = jax.device_put(jnp.ones((2, 5, 1, 16)), jax.NamedSharding(mesh, jax.P('data')))\n"
      "print(jax.jit(kernel_cache_probe)(q).shape)\n")
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu",
             JAX_LOG_COMPILES="1")
  runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
          for _ in range(2)]
  for run in runs:
    assert run.returncode == 0, run.stderr
  entries = [f for f in os.listdir(tmp_path / "xla") if f.startswith("jit_kernel_cache_probe-")]
  assert len(entries) == 1, entries
  assert "Persistent compilation cache hit for 'jit_kernel_cache_probe'" in runs[1].stderr, \
      runs[1].stderr[-2000:]
