"""Optimizer: lr scaling and schedule, weight-decay mask, frozen parameters."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mae_jax import optim
from helpers import load_config


def test_schedule_scaling_warmup_and_cosine():
  c = load_config(lr=1.5e-4, batch_size=512, total_steps=100, warmup_steps=10, min_lr=0.0)
  sched = optim.learning_rate(c)
  peak = 1.5e-4 * 512 / 256
  np.testing.assert_allclose(float(sched(0)), 0.0, atol=1e-12)
  np.testing.assert_allclose(float(sched(5)), peak * 5 / 10, rtol=1e-5)
  np.testing.assert_allclose(float(sched(10)), peak, rtol=1e-5)
  # half-cosine from the end of warm-up to total_steps
  t = (55 - 10) / (100 - 10)
  np.testing.assert_allclose(float(sched(55)), peak * 0.5 * (1 + np.cos(np.pi * t)), rtol=1e-4)
  np.testing.assert_allclose(float(sched(100)), 0.0, atol=1e-9)


def test_decay_mask_skips_biases_norms_and_tokens():
  params = {"encoder": {"cls_token": jnp.zeros((1, 1, 4)), "norm": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
                        "block_00": {"attn": {"qkv": {"kernel": jnp.ones((4, 12)), "bias": jnp.zeros(12)}}}},
            "decoder": {"mask_token": jnp.zeros((1, 1, 4)), "pred": {"kernel": jnp.ones((4, 3))}}}
  mask = optim.decay_mask(params)
  assert mask["encoder"]["block_00"]["attn"]["qkv"] == {"kernel": True, "bias": False}
  assert mask["encoder"]["norm"] == {"scale": False, "bias": False}
  assert mask["encoder"]["cls_token"] is False and mask["decoder"]["mask_token"] is False
  assert mask["decoder"]["pred"]["kernel"] is True


def test_weight_decay_value_on_kernels_only():
  c = load_config(lr=1e-3, batch_size=256, total_steps=10, warmup_steps=0)
  params = {"w": {"kernel": jnp.ones((2, 2))}, "b": {"bias": jnp.ones(2)}}
  tx, sched = optim.make_optimizer(c, params)
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, state, params)
  lr0 = float(sched(0))
  # zero gradient: Adam term is 0, decoupled decay gives -lr * wd * p on kernels only
  np.testing.assert_allclose(np.asarray(updates["w"]["kernel"]), -lr0 * 0.05, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(updates["b"]["bias"]), 0.0)


def test_frozen_parameters_get_no_update():
  c = load_config(total_steps=10, warmup_steps=0, optim__frozen=r"encoder/.*")
  params = {"encoder": {"k": jnp.ones((3, 3))}, "head": {"k": jnp.ones((3, 3))}}
  tx, _ = optim.make_optimizer(c, params)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(np.asarray(params["encoder"]["k"]), 1.0)
  assert not np.allclose(np.asarray(params["head"]["k"]), 1.0)


def test_layer_decay_multipliers_follow_depth():
  """decay ** (depth + 1 - layer): embeddings deepest in decay, head and final norm untouched."""
  params = {"backbone": {"encoder": {
      "patch_embed": {"proj": {"kernel": jnp.ones((2, 2, 1, 4))}}, "cls_token": jnp.ones((1, 1, 4)),
      "block_00": {"mlp": {"fc1": {"kernel": jnp.ones((4, 4))}}},
      "block_01": {"mlp": {"fc1": {"kernel": jnp.ones((4, 4))}}},
      "block_02": {"mlp": {"fc1": {"kernel": jnp.ones((4, 4))}}},
      "norm": {"scale": jnp.ones(4)}}}, "head": {"dense": {"kernel": jnp.ones((4, 1))}}}
  m = optim.layer_decay_multipliers(params, 0.75)
  enc = m["backbone"]["encoder"]
  assert enc["patch_embed"]["proj"]["kernel"] == 0.75 ** 4 and enc["cls_token"] == 0.75 ** 4
  assert [enc[f"block_0{i}"]["mlp"]["fc1"]["kernel"] for i in range(3)] == [0.75 ** 3, 0.75 ** 2, 0.75]
  assert enc["norm"]["scale"] == 1.0 and m["head"]["dense"]["kernel"] == 1.0


def test_layer_decay_puts_hybrid_embeddings_at_layer_zero():
  """ConvMAE's conv stages and fusion projections, ChannelMAE's channel table: embeddings
  (the deepest decay), not head parameters at full lr; and the table gets no weight decay."""
  from mae_jax.models.hybrids import channel as channel_mae, convmae
  x = jnp.zeros((1, 25, 25, 3))
  for model in (convmae.ConvMAE(variant="tiny", patch=5, channels=3),
                channel_mae.ChannelMAE(variant="tiny", patch=5, channels=3)):
    params = jax.eval_shape(lambda m=model: m.init(
        {"params": jax.random.key(0), "masking": jax.random.key(1)}, x)["params"])
    params = {"backbone": {"encoder": params["encoder"]}, "head": {"dense": {"kernel": x}}}
    m = optim.layer_decay_multipliers(params, 0.5)
    names = optim.path_names(params)
    depth = len([k for k in params["backbone"]["encoder"] if k.startswith("block_")])
    for name, mult in zip(jax.tree.leaves(names), jax.tree.leaves(m)):
      if re.search(r"encoder/(stage\d|fuse|channel_embed|patch_embed|cls_token)", name):
        assert mult == 0.5 ** (depth + 1), name
    assert m["head"]["dense"]["kernel"] == 1.0
  assert optim.decay_mask({"encoder": {"channel_embed": x[0, 0]}})["encoder"]["channel_embed"] is False


def test_layer_decay_scales_the_update():
  c = load_config(lr=1e-3, batch_size=256, total_steps=10, warmup_steps=0, optim__layer_decay=0.5,
                  optim__weight_decay=0.0)
  params = {"encoder": {"block_00": {"k": jnp.ones((2, 2))}, "block_01": {"k": jnp.ones((2, 2))}},
            "head": {"k": jnp.ones((2, 2))}}
  tx, _ = optim.make_optimizer(c, params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  head = float(updates["head"]["k"][0, 0])
  np.testing.assert_allclose(float(updates["encoder"]["block_01"]["k"][0, 0]), 0.5 * head, rtol=1e-6)
  np.testing.assert_allclose(float(updates["encoder"]["block_00"]["k"][0, 0]), 0.25 * head, rtol=1e-6)
