"""ResNet-15 / ResNet-50 baselines: shapes, parameter counts, BatchNorm modes, a toy fit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mae_jax.models import heads, resnet


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_init(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32)))


@pytest.mark.parametrize("channels,norm,n_params,n_stats", [
    (8, "none", 90_161, 0), (3, "none", 86_241, 0), (8, "batch", 90_561, 800), (3, "batch", 86_641, 800)])
def test_resnet15_parameter_counts(channels, norm, n_params, n_stats):
  v = abstract_init(resnet.ResNet15(norm=norm), (1, 125, 125, channels))
  print(f"ResNet15 C={channels} norm={norm}: {count(v['params']):,} params, "
        f"{count(v.get('batch_stats', {})):,} batch stats")
  assert count(v["params"]) == n_params
  assert count(v.get("batch_stats", {})) == n_stats
  convs = [k for k, x in jax.tree_util.tree_flatten_with_path(v["params"])[0]
           if k[-2].key == "conv" and k[-1].key == "kernel"]
  kernels = [p for p in convs if "shortcut" not in jax.tree_util.keystr(p)]
  assert len(kernels) == 15  # conv0 + 7 blocks x 2 (1x1 shortcut not counted)


def test_resnet50_parameter_count_and_shapes():
  model = resnet.ResNet50(num_outputs=2)
  v = abstract_init(model, (1, 125, 125, 8))
  print(f"ResNet50 C=8: {count(v['params']):,} params, {count(v['batch_stats']):,} batch stats")
  # torchvision resnet50 without fc (23,508,032) + 8-channel stem (+15,680) + Dense(2048 -> 2)
  assert count(v["params"]) == 23_508_032 + 15_680 + 2 * 2048 + 2
  logits, aux = jax.eval_shape(model.apply, v, jax.ShapeDtypeStruct((3, 125, 125, 8), jnp.float32))
  assert logits.shape == (3, 2) and aux["features"].shape == (3, 2048)


def test_resnet15_forward_shapes_125():
  """Shapes at the E2E image size (abstract evaluation: the toy test below runs real numbers)."""
  model = resnet.ResNet15(num_outputs=1)
  x = jax.ShapeDtypeStruct((2, 125, 125, 8), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  logits, aux = jax.eval_shape(model.apply, variables, x)
  assert logits.shape == (2, 1) and logits.dtype == jnp.float32
  assert aux["features"].shape == (2, 32)
  # feature-map sizes of the reading documented in resnet.py: 125 -> 121 -> 60 -> 30
  _, inter = jax.eval_shape(lambda v, im: model.apply(v, im, capture_intermediates=True,
                                                      mutable=["intermediates"]), variables, x)
  inter = inter["intermediates"]
  assert inter["conv0"]["__call__"][0].shape == (2, 121, 121, 16)
  assert inter["block_2"]["__call__"][0].shape == (2, 60, 60, 16)
  assert inter["block_3"]["__call__"][0].shape == (2, 30, 30, 32)
  assert inter["block_6"]["__call__"][0].shape == (2, 30, 30, 32)
  # extra per-jet scalars (as the reference's seed ieta/iphi) enter the final Dense
  v3 = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 125, 125, 8)),
                                         extra=jnp.zeros((2, 2))))
  assert count(v3["params"]) == count(variables["params"]) + 2
  with pytest.raises(ValueError, match="channels-last"):
    model.init(jax.random.key(0), jnp.zeros((125, 125, 8)))


def toy_data(n=16, size=32, seed=0):
  """Label = channel 0 has energy in the top half. One channel-0 hit per image, noise in ch. 1."""
  rng = np.random.default_rng(seed)
  x = np.zeros((n, size, size, 2), np.float32)
  y = np.arange(n) % 2
  for i in range(n):
    row = rng.integers(0, size // 2) if y[i] else rng.integers(size // 2, size)
    x[i, row, rng.integers(0, size), 0] = rng.uniform(1, 3)
    hits = rng.integers(0, size, (5, 2))
    x[i, hits[:, 0], hits[:, 1], 1] = rng.uniform(0, 1, 5)
  return jnp.asarray(x), jnp.asarray(y)


def test_resnet15_overfits_toy_and_batch_stats_update_only_in_train():
  """16 toy images, 40 Adam steps of a width-8 ResNet-15: the BCE falls by 10x or more."""
  x, y = toy_data()
  model = resnet.ResNet15(num_outputs=1, width=8)
  # the rbg key compiles the initialisers in ~3 s instead of ~12 s for threefry on this CPU
  variables = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), x)
  params, stats = variables["params"], variables["batch_stats"]
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  def loss_fn(p, s):
    (logits, _), upd = model.apply({"params": p, "batch_stats": s}, x, train=True,
                                   mutable=["batch_stats"])
    return heads.binary_cross_entropy_with_logits(logits, y), upd["batch_stats"]

  @jax.jit
  def step(p, s, o):
    (loss, s_new), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s)
    upd, o = tx.update(g, o, p)
    return optax.apply_updates(p, upd), s_new, o, loss

  losses = []
  s = stats
  for _ in range(40):
    params, s, opt, loss = step(params, s, opt)
    losses.append(float(loss))
  print("toy losses", [round(v, 4) for v in losses[::5]], round(losses[-1], 4))
  assert losses[-1] < 0.1 * losses[0], losses
  # train mode moved every running statistic
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), s, stats))
  assert all(changed)
  # eval mode reads the running averages and writes nothing: "batch_stats" is immutable here
  # (flax would raise if BatchNorm tried to update it). The running averages lag the last
  # steps' batch statistics (momentum 0.9), so eval accuracy is only required to be high.
  logits, _ = jax.jit(lambda v: model.apply(v, x, train=False))({"params": params, "batch_stats": s})
  assert np.mean((np.asarray(logits[:, 0]) > 0) == np.asarray(y)) >= 0.75
