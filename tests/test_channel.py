"""Channel-aware MAE: token layout, interface, the decoder-leak guard, sharded training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import experiment, parallel
from mae_jax.models.hybrids import channel as channel_mae
from mae_jax.models import mae as mae_lib
from mae_jax.tasks import mae as mae_task
from mae_jax.tasks.targets import pixels
from helpers import load_config, train_setup

RNGS = {"params": jax.random.key(0), "masking": jax.random.key(1)}


@pytest.fixture(scope="module")
def built():
  model = channel_mae.ChannelMAE(variant="tiny", patch=5, channels=3)
  x = jax.random.uniform(jax.random.key(3), (2, 25, 25, 3))
  noise = jax.random.uniform(jax.random.key(4), (2, 25))
  variables = model.init(RNGS, x)
  apply = jax.jit(lambda v, im: model.apply(v, im, noise=noise, mutable="intermediates"))
  (pred, aux), inter = apply(variables, x)
  loss = mae_task.objective(pixels.Targets(5), (pred, aux), x)  # the task's loss
  return model, variables, x, apply, loss, aux, inter


def decoder_input(inter):
  return inter["intermediates"]["decoder"]["decoder_input"][0]


def test_channel_tokens_match_a_loop_reference():
  x = np.random.default_rng(0).normal(size=(2, 10, 15, 3)).astype(np.float32)
  t = np.asarray(channel_mae.channel_tokens(jnp.asarray(x), 5))
  assert t.shape == (2, 6, 3, 25)
  for n in range(6):
    i, j = divmod(n, 3)
    for c in range(3):
      np.testing.assert_array_equal(t[:, n, c], x[:, 5 * i:5 * i + 5, 5 * j:5 * j + 5, c].reshape(2, 25))
  # the decoder's reordering of per-token predictions is its exact inverse
  np.testing.assert_array_equal(np.asarray(channel_mae.patches_from_channel_tokens(jnp.asarray(t))),
                                np.asarray(mae_lib.patchify(jnp.asarray(x), 5)))


def test_interface_and_prediction_layout(built):
  model, variables, x, _, loss, aux, _ = built
  keep = int(25 * 0.25)
  assert set(variables["params"]) == {"encoder", "decoder"}
  assert aux["pred"].shape == (2, 25, 75)
  assert aux["mask"].shape == aux["ids_restore"].shape == (2, 25)
  assert aux["latent"].shape == (2, 1 + 3 * keep, 64)  # one token per visible (patch, channel)
  np.testing.assert_allclose(float(loss), float(mae_task.masked_mse(
      aux["pred"], mae_lib.patchify(x, 5), aux["mask"])), rtol=1e-6)
  # the pixel head's p*p outputs land on the p*p pixels of their patch (which token goes to
  # which patch and channel: patches_from_channel_tokens, tested against a loop above)
  params = jax.tree.map(lambda a: a, variables["params"])
  head = params["decoder"]["pred"]
  head["kernel"] = jnp.zeros_like(head["kernel"])
  head["bias"] = jnp.arange(25, dtype=jnp.float32)  # pixel k of every token predicts k
  (_, aux2), _ = jax.jit(lambda v: model.apply(v, x, rngs={"masking": jax.random.key(0)},
                                               mutable="intermediates"))({"params": params})
  img = np.asarray(mae_lib.unpatchify(aux2["pred"], 5, (5, 5), 3))
  want = np.broadcast_to(np.arange(25.0).reshape(5, 5)[:, :, None], (5, 5, 3))
  np.testing.assert_array_equal(img[0, 5:10, 10:15], want)


def test_decoder_input_holds_nothing_of_masked_patches(built):
  """The leak the reference channel-former had: its decoder saw unmasked patches. Here the
  decoder input (sown before its first block) is bit-identical whatever the masked pixels
  hold, and its gradient with respect to them is exactly 0; one visible pixel changes it."""
  model, variables, x, apply, _, aux, inter = built
  masked = np.asarray(mae_lib.unpatchify(
      jnp.repeat(aux["mask"][..., None], 75, -1), 5, (5, 5), 3)) > 0
  x2 = jnp.where(masked, x + 50.0 * jax.random.normal(jax.random.key(9), x.shape), x)
  (_, aux2), inter2 = apply(variables, x2)
  np.testing.assert_array_equal(np.asarray(decoder_input(inter2)), np.asarray(decoder_input(inter)))
  np.testing.assert_array_equal(np.asarray(aux2["pred"]), np.asarray(aux["pred"]))

  def summary(im):
    (_, _), it = apply(variables, im)
    d = decoder_input(it)
    return jnp.sum(d * jnp.cos(jnp.arange(d.size, dtype=d.dtype).reshape(d.shape)))

  g = np.asarray(jax.grad(summary)(x))
  assert np.all(g[masked] == 0.0)
  assert np.abs(g[~masked]).max() > 0  # the check is not vacuous
  b, i, j, c = map(int, np.argwhere(~masked)[0])
  (_, _), inter3 = apply(variables, x.at[b, i, j, c].add(1.0))
  assert not np.array_equal(np.asarray(decoder_input(inter3)), np.asarray(decoder_input(inter)))


def test_encode_shapes_and_batch_independence(built):
  model, variables, x, _, _, _, _ = built
  encode = jax.jit(lambda im: model.apply(variables, im, method="encode"))
  f = encode(x)
  assert f["tokens"].shape == (2, 1 + 25 * 3, 64) and f["cls"].shape == f["mean"].shape == (2, 64)
  f1 = encode(jnp.concatenate([x[:1], x[:1] * 0.5]))
  np.testing.assert_allclose(np.asarray(f1["tokens"][:1]), np.asarray(f["tokens"][:1]),
                             rtol=1e-5, atol=1e-5)


def test_sharded_train_step_learns():
  """Built from a config (model.name=channel_mae) by the trainer, on the 8-device mesh."""
  config = load_config(batch_size=8, total_steps=20, warmup_steps=2, lr=0.1)
  config.model.name = "channel_mae"
  mesh = parallel.make_mesh([("data", -1)], jax.devices())
  model, setup, step = train_setup(config, (25, 25, 3), mesh)
  assert isinstance(model, channel_mae.ChannelMAE)
  state = setup.state
  yy, xx = np.mgrid[0:25, 0:25]
  blob = np.exp(-((yy - 12.0) ** 2 + (xx - 11.0) ** 2) / 10.0)
  batch = np.stack([blob, blob ** 2, np.sqrt(blob)], -1)[None]
  batch = (batch * np.linspace(0.5, 1.5, 8)[:, None, None, None]).astype(np.float32)
  losses = []
  for _ in range(10):
    state, metrics = step(state, parallel.global_batch({"image": batch}, mesh))
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses


def test_probe_classifier_on_channel_tokens():
  """configs/probe.py:model=channel_mae builds the classifier on the channel-aware encoder;
  the pretrain encoder tree is exactly the classifier's backbone/encoder tree."""
  config = load_config("probe", "variant=tiny,model=channel_mae")
  model = experiment.build_model(config, (25, 25, 3))
  x = jax.random.uniform(jax.random.key(0), (2, 25, 25, 3))
  variables = model.init(RNGS, x)
  out, feats = model.apply(variables, x)
  assert out.shape == (2, 1) and feats["mean"].shape == (2, 64)
  pretrain = channel_mae.ChannelMAE(variant="tiny", patch=5, channels=3).init(RNGS, x)
  assert (jax.tree.structure(pretrain["params"]["encoder"])
          == jax.tree.structure(variables["params"]["backbone"]["encoder"]))
