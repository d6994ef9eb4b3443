"""Mesh from config, FSDP specs, and 1-device vs 8-device equality of a train step."""

import jax
import numpy as np
import pytest

from mae_jax import parallel
from helpers import load_config, train_setup


def test_make_mesh_fills_minus_one_and_rejects_bad_shapes():
  mesh = parallel.make_mesh([("data", -1)])
  assert dict(mesh.shape) == {"data": 8}
  mesh = parallel.make_mesh([("data", -1), ("fsdp", 2)])
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  with pytest.raises(ValueError, match="not divisible by 3"):
    parallel.make_mesh([("data", -1), ("fsdp", 3)])
  with pytest.raises(ValueError, match="needs 4 devices, 8 are present"):
    parallel.make_mesh([("data", 4)])
  with pytest.raises(ValueError, match="at most one axis"):
    parallel.make_mesh([("data", -1), ("fsdp", -1)])


def test_fsdp_spec_splits_largest_divisible_dim():
  assert parallel.fsdp_spec((128, 384), "fsdp", 2) == jax.sharding.PartitionSpec(None, "fsdp")
  assert parallel.fsdp_spec((128,), "fsdp", 2) == jax.sharding.PartitionSpec()  # small: replicated
  assert parallel.fsdp_spec((129, 127), "fsdp", 2) == jax.sharding.PartitionSpec()  # nothing divides
  assert parallel.fsdp_spec((64, 64), "fsdp", 1) == jax.sharding.PartitionSpec()


def run_steps(mesh_axes, devices, batch, steps=2):
  config = load_config(batch_size=16, total_steps=10, warmup_steps=2, lr=1e-3)
  config.mesh = mesh_axes
  mesh = parallel.make_mesh(config.mesh, devices)
  _, setup, step = train_setup(config, batch.shape[1:], mesh)
  state = setup.state
  losses = []
  for _ in range(steps):
    state, metrics = step(state, parallel.global_batch({"image": batch}, mesh))
    losses.append(float(metrics["loss"]))
  return losses, jax.tree.map(np.asarray, jax.device_get(state["params"])), state


@pytest.fixture(scope="module")
def one_device_run():
  batch = np.random.default_rng(0).random((16, 25, 25, 3)).astype(np.float32)
  return batch, run_steps([("data", -1)], jax.devices()[:1], batch)


@pytest.mark.parametrize("axes", [[("data", -1)], [("data", -1), ("fsdp", 2)]])
def test_one_vs_eight_devices_equal(one_device_run, axes):
  batch, (losses1, params1, _) = one_device_run
  losses8, params8, state8 = run_steps(axes, jax.devices(), batch)
  assert len(state8["params"]["encoder"]["block_00"]["mlp"]["fc1"]["kernel"].sharding.device_set) == 8
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  flat1 = jax.tree_util.tree_flatten_with_path(params1)[0]
  flat8 = jax.tree.leaves(params8)
  for (path, a), b in zip(flat1, flat8):
    name = jax.tree_util.keystr(path)
    if name.endswith("['qkv']['bias']"):
      # The key bias adds q.b_k to every logit of a query, which softmax ignores: its exact
      # gradient is 0, its float gradient is round-off noise that Adam rescales (eps 1e-8).
      # Compare query/value biases tightly and the key bias to 1e-6 absolute (lr is 6e-5).
      width = a.shape[0] // 3
      key = slice(width, 2 * width)
      np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-6, err_msg=name)
      a, b = np.delete(a, np.arange(width, 2 * width)), np.delete(b, np.arange(width, 2 * width))
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7, err_msg=name)
  assert losses1[1] != losses1[0]  # the step did update something


def state_bytes_per_device(fsdp):
  """Bytes of the train state held by one device, from the shardings of the created state."""
  config = load_config("pretrain", "variant=tiny", batch_size=8)
  config.mesh = [("data", -1), ("fsdp", fsdp)]
  mesh = parallel.make_mesh(config.mesh)
  _, setup, step = train_setup(config, (25, 25, 3), mesh)
  state = setup.state
  device = jax.devices()[0]
  per_device = sum(s.data.nbytes for leaf in jax.tree.leaves(state)
                   for s in leaf.addressable_shards if s.device == device)
  # XLA's own accounting of the step's inputs on one device agrees with the shard sizes
  batch = parallel.global_batch({"image": np.zeros((8, 25, 25, 3), np.float32)}, mesh)
  mem = step.lower(state, batch).compile().memory_analysis()
  return per_device, getattr(mem, "argument_size_in_bytes", None)


@pytest.mark.slow
def test_fsdp_memory_per_device_falls_with_devices():
  sizes = {n: state_bytes_per_device(n) for n in (1, 2, 8)}
  shards = [sizes[n][0] for n in (1, 2, 8)]
  assert shards[0] > shards[1] > shards[2], sizes
  assert shards[2] < 0.3 * shards[0], sizes  # most of the state is in large, split matrices
  if sizes[1][1] is not None:  # XLA memory analysis: parameters + optimizer state + batch
    assert sizes[1][1] > sizes[2][1] > sizes[8][1], sizes
