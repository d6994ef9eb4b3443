"""Hybrid conv + transformer MAEs: interface, leak guarantees, sharded training, counts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import experiment, optim, parallel, tasks
from mae_jax.evaluate import grad_norms
from mae_jax.models.hybrids import convmae, convstem, depthwise
from mae_jax.models import conv
from mae_jax.models import mae as mae_lib
import data_fixtures
from helpers import load_config

from mae_jax.tasks import mae as mae_task  # noqa: E402
from mae_jax.tasks.targets import pixels  # noqa: E402

RNGS = {"params": jax.random.key(0), "masking": jax.random.key(1)}
MODELS = [depthwise.DepthwiseMAE, convstem.ConvStemMAE, convmae.ConvMAE]
IDS = [m.__name__ for m in MODELS]
AUX_KEYS = {"pred", "mask", "latent", "ids_restore"}


def count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def param_shapes(model, shape):
  return jax.eval_shape(lambda: model.init(RNGS, jnp.zeros(shape)))["params"]


CONFIG = dict(batch_size=8, total_steps=20, warmup_steps=2, lr=0.1)


@pytest.fixture(scope="module", params=MODELS, ids=IDS)
def built(request):
  """A tiny model for 25x25x3 images (patch 5: 5x5 tokens), initialised by the trainer's
  `create_state` on the 8-device mesh (host copy of that state kept for the training
  test), and one jitted forward with fixed masking noise."""
  model = request.param(variant="tiny", patch=5, channels=3)
  mesh = parallel.make_mesh([("data", -1)], jax.devices())
  state = experiment.create_state(load_config(**CONFIG), model, mesh, (25, 25, 3)).state
  initial = jax.device_get(state)
  variables = {"params": initial["params"]}
  x = jax.random.uniform(jax.random.key(3), (2, 25, 25, 3))
  noise = jax.random.uniform(jax.random.key(4), (2, 25))
  apply = jax.jit(lambda v, im: model.apply(v, im, noise=noise))
  pred, aux = apply(variables, x)
  np.testing.assert_array_equal(np.asarray(pred), np.asarray(aux["pred"]))  # dense: the grid
  loss = mae_task.objective(pixels.Targets(5), (pred, aux), x)  # the task's loss
  return model, variables, x, apply, loss, aux, noise, initial


def test_interface_shapes_and_loss(built):
  model, variables, x, _, loss, aux, _, _ = built
  assert set(variables["params"]) == {"encoder", "decoder"}
  assert set(aux) == AUX_KEYS
  keep = int(25 * 0.25)
  assert aux["pred"].shape == (2, 25, 5 * 5 * 3)
  assert aux["mask"].shape == aux["ids_restore"].shape == (2, 25)
  np.testing.assert_array_equal(np.asarray(aux["mask"]).sum(1), 25 - keep)
  assert aux["latent"].shape[:2] == (2, 1 + keep)
  np.testing.assert_allclose(float(mae_task.masked_mse(aux["pred"], mae_lib.patchify(x, 5),
                                                       aux["mask"])), float(loss), rtol=1e-6)
  # the plots' reconstruction path works unchanged
  assert mae_lib.unpatchify(aux["pred"], model.patch, (5, 5), 3).shape == x.shape


def masked_pixels(aux, patch, grid, c):
  return mae_lib.unpatchify(jnp.repeat(aux["mask"][..., None], patch * patch * c, -1), patch, grid, c)


def test_masked_pixels_do_not_reach_encoder_or_prediction(built):
  """The leak test: new content in masked patches leaves latent and pred bit-identical;
  a change in one visible pixel does change the latent (the test is not vacuous)."""
  _, variables, x, apply, _, aux, _, _ = built
  pm = masked_pixels(aux, 5, (5, 5), 3)
  x2 = x + pm * jax.random.normal(jax.random.key(9), x.shape) * 50.0
  _, aux2 = apply(variables, x2)
  np.testing.assert_array_equal(np.asarray(aux2["latent"]), np.asarray(aux["latent"]))
  np.testing.assert_array_equal(np.asarray(aux2["pred"]), np.asarray(aux["pred"]))
  b, i, j = map(int, np.argwhere(np.asarray(pm[..., 0]) == 0)[0])
  _, aux3 = apply(variables, x.at[b, i, j, 0].add(1.0))
  assert not np.array_equal(np.asarray(aux3["latent"]), np.asarray(aux["latent"]))


def test_convmae_masked_convolution_alone_blocks_leaks(built):
  """ConvMAE: without zeroing the input, its masked convolutions + non-overlapping
  stage embeddings alone keep visible features independent of masked pixels.
  (Checked on the ConvMAE parameter of the fixture; trivially true for the others.)"""
  model, variables, x, _, _, aux, noise, _ = built
  if not isinstance(model, convmae.ConvMAE):
    return
  keep_fn = lambda t: mae_lib.random_masking(t, 0.75, noise)[0]  # noqa: E731
  # the encoder called directly on the raw image (no zeroing); an all-zero mask
  # turns the masked convolution off (every position counts as visible)
  enc = jax.jit(lambda im, m: model.apply(variables, im, m, keep_fn,
                                          method=lambda mdl, *a: mdl.encoder(*a)))
  pm = masked_pixels(aux, 5, (5, 5), 3)
  x2 = x + pm * 3.0
  mask = aux["mask"]
  np.testing.assert_allclose(np.asarray(enc(x2, mask)), np.asarray(enc(x, mask)), rtol=0, atol=1e-6)
  # and the mask is what blocks it: without it the 5x5 depthwise conv does leak
  off = jnp.zeros_like(mask)
  assert np.abs(np.asarray(enc(x2, off)) - np.asarray(enc(x, off))).max() > 1e-4


def test_encode(built):
  model, variables, x, _, _, _, _, _ = built
  encode = jax.jit(lambda im: model.apply(variables, im, method="encode"))
  f = encode(x)
  d = f["tokens"].shape[-1]
  assert f["tokens"].shape == (2, 26, d) and f["cls"].shape == f["mean"].shape == (2, d)
  np.testing.assert_allclose(np.asarray(f["mean"]), np.asarray(f["tokens"][:, 1:]).mean(1),
                             rtol=1e-5, atol=1e-6)
  if isinstance(model, convmae.ConvMAE):  # no CLS token: "cls" is the mean-pooled token
    np.testing.assert_allclose(np.asarray(f["cls"]), np.asarray(f["mean"]), rtol=1e-5, atol=1e-6)
  f1 = encode(jnp.concatenate([x[:1], x[:1] * 0.5]))
  np.testing.assert_allclose(np.asarray(f1["tokens"][:1]), np.asarray(f["tokens"][:1]), rtol=1e-5,
                             atol=1e-5)


def train_steps(config, model, state, shardings, tx, schedule, mesh, batch, steps):
  setup = experiment.StateSetup(state, shardings, tx, schedule)
  step = experiment.make_train_step(config, model, tasks.build(config), setup, mesh)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, parallel.global_batch({"image": batch}, mesh))
    losses.append(float(metrics["loss"]))
  return losses, state


def test_sharded_train_step_learns_and_matches_one_device(built):
  """experiment.create_state (in the fixture) / make_train_step with the hybrid model: loss
  falls over 10 steps on 8 devices (batch split over "data") and the first two losses
  equal those of the same steps on 1 device."""
  model, _, _, _, _, _, _, initial = built
  yy, xx = np.mgrid[0:25, 0:25]
  blob = np.exp(-((yy - 12.0) ** 2 + (xx - 11.0) ** 2) / 10.0)
  batch = np.stack([blob, blob ** 2, np.sqrt(blob)], -1)[None]
  batch = (batch * np.linspace(0.5, 1.5, 8)[:, None, None, None]).astype(np.float32)
  config = load_config(**CONFIG)
  tx, schedule = optim.make_optimizer(config, initial["params"])
  losses = {}
  for n_dev, steps in ((8, 10), (1, 2)):
    mesh = parallel.make_mesh([("data", -1)], jax.devices()[:n_dev])
    shardings = parallel.state_shardings(mesh, initial)
    state = jax.device_put(initial, shardings)
    losses[n_dev], state = train_steps(config, model, state, shardings, tx, schedule, mesh,
                                       batch, steps)
    kernel = state["params"]["encoder"]["block_00"]["mlp"]["fc1"]["kernel"]
    assert len(kernel.sharding.device_set) == n_dev
  assert all(np.isfinite(losses[8]))
  assert np.mean(losses[8][-3:]) < 0.5 * np.mean(losses[8][:3]), losses[8]
  np.testing.assert_allclose(losses[8][:2], losses[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("patch,hw,strides", [(5, 125, (1, 5, 1)), (25, 125, (5, 5, 1)),
                                              (16, 32, (4, 2, 2)), (4, 16, (2, 2, 1))])
def test_convmae_strides_and_full_size_shapes(patch, hw, strides):
  assert convmae.convmae_strides(patch) == strides
  model = convmae.ConvMAE(variant="tiny", patch=patch, channels=8)
  x = jax.ShapeDtypeStruct((2, hw, hw, 8), jnp.float32)
  variables = jax.eval_shape(lambda im: model.init(RNGS, im), x)
  _, aux = jax.eval_shape(lambda v, im: model.apply(v, im, rngs={"masking": jax.random.key(0)}),
                          variables, x)
  n = (hw // patch) ** 2
  assert aux["pred"].shape == (2, n, patch * patch * 8) and aux["mask"].shape == (2, n)


@pytest.mark.parametrize("cls", MODELS, ids=IDS)
def test_full_size_125_patch_5(cls):
  """125x125x8 with patch 5 (the trainer's check_image_shape passes): shapes only."""
  mae_lib.check_image_shape((125, 125), 5)
  model = cls(variant="tiny", patch=5, channels=8)
  x = jax.ShapeDtypeStruct((2, 125, 125, 8), jnp.float32)
  variables = jax.eval_shape(lambda im: model.init(RNGS, im), x)
  _, aux = jax.eval_shape(lambda v, im: model.apply(v, im, rngs={"masking": jax.random.key(0)}),
                          variables, x)
  assert aux["pred"].shape == (2, 625, 200)
  f = jax.eval_shape(lambda v, im: model.apply(v, im, method="encode"), variables, x)
  assert f["tokens"].shape[:2] == (2, 626)


# Trainable parameters on 125x125x8, patch 5 (listed in docs/models.md) and fixed
# sin-cos table entries.
COUNTS = {
    (depthwise.DepthwiseMAE, "tiny"): (134_664, 60_096),
    (depthwise.DepthwiseMAE, "e2e-base"): (4_821_448, 160_256),
    (convstem.ConvStemMAE, "tiny"): (134_664, 60_096),
    (convstem.ConvStemMAE, "e2e-base"): (4_845_832, 160_256),
    (convmae.ConvMAE, "tiny"): (134_872, 60_032),
    (convmae.ConvMAE, "e2e-base"): (4_824_264, 160_128),
}


@pytest.mark.parametrize("cls,variant", list(COUNTS), ids=[f"{c.__name__}-{v}" for c, v in COUNTS])
def test_parameter_counts(cls, variant):
  model = cls(variant=variant, patch=5, channels=8)
  shapes = param_shapes(model, (1, 125, 125, 8))
  assert (count(shapes), model.num_fixed_params((125, 125))) == COUNTS[(cls, variant)]
  assert set(shapes) == {"encoder", "decoder"}


VIT_TRAINABLE = {"tiny": 134_504, "e2e-base": 4_827_336}  # tests/test_mae.py asserts these


@pytest.mark.parametrize("cls,variant", list(COUNTS), ids=[f"{c.__name__}-{v}" for c, v in COUNTS])
def test_matched_families_have_the_vit_parameter_count_within_half_a_percent(cls, variant):
  trainable = count(param_shapes(cls(variant=variant, patch=5, channels=8), (1, 125, 125, 8)))
  vit_count = count(param_shapes(mae_lib.MAE(variant=variant, patch=5, channels=8), (1, 125, 125, 8)))
  assert vit_count == VIT_TRAINABLE[variant]
  assert abs(trainable / vit_count - 1) <= 0.005, (trainable, vit_count)


def init_grad_norm(model, x):
  return grad_norms.init_grad_norm(model, x)[0]


@pytest.mark.slow
@pytest.mark.parametrize("cls", [convstem.ConvStemMAE, convmae.ConvMAE], ids=lambda c: c.__name__)
def test_conv_norms_keep_step_one_gradients_on_sparse_images_like_the_vit(cls, monkeypatch):
  """Per-pixel LayerNorms over empty pixels (zero vectors) scale gradients by
  scale/sqrt(eps); with eps = 1e-6 the stacked conv-stage norms overflowed float32 on the
  jets (conv.SPARSE_LN_EPS). Bound: within 10x the ViT MAE's norm on the same sparse images
  (measured ratio 1.03 conv stem, 0.97 ConvMAE; with eps = 1e-6 the ConvMAE norm is inf,
  checked below so the bound is known to catch it)."""
  x = jnp.asarray(data_fixtures.sparse_images(4, 50, 50, 8, frac=0.01))  # 92% pixels empty
  vit_norm = init_grad_norm(mae_lib.MAE(variant="tiny", patch=5, channels=8), x)
  norm = init_grad_norm(cls(variant="tiny", patch=5, channels=8), x)
  assert np.isfinite(norm) and norm <= 10 * vit_norm, (norm, vit_norm)
  if cls is convmae.ConvMAE:  # the bound catches the ViT's eps in the conv stages
    monkeypatch.setitem(convmae.CONVMAE_VARIANTS, "tiny-vit-eps", dataclasses.replace(
        convmae.CONVMAE_VARIANTS["tiny"], conv_ln_eps=1e-6))
    bad = init_grad_norm(cls(variant="tiny-vit-eps", patch=5, channels=8), x)
    assert not bad <= 1e4 * vit_norm, (bad, vit_norm)


def test_depthwise_embedding_is_grouped_per_channel():
  shapes = param_shapes(depthwise.DepthwiseMAE(variant="e2e-base", patch=5, channels=8),
                        (1, 125, 125, 8))
  emb = shapes["encoder"]["patch_embed"]
  assert emb["dwconv"]["kernel"].shape == (5, 5, 1, 128)  # 16 filters for each of 8 channels
  assert emb["proj"]["kernel"].shape == (128, 128)
  # The reference's 4,990,920 = this model - proj (16,512) + the ViT linear patch
  # projection (25,728), with the two fixed tables (see docs/models.md).
  assert count(shapes) - 16_512 + 25_728 + 160_256 == 4_990_920
  # ViT parameter names are unchanged outside the patch embedding
  assert shapes["encoder"]["block_00"]["attn"]["qkv"]["kernel"].shape == (128, 384)


def test_unknown_variant_and_fixed_patch():
  with pytest.raises(ValueError, match="Unknown ConvMAE variant 'huge'"):
    convmae.ConvMAE(variant="huge", channels=3).init(RNGS, jnp.zeros((1, 25, 25, 3)))
  with pytest.raises(ValueError, match="fixes patch 25 but patch=5"):
    convstem.ConvStemMAE(variant="tiny/25", patch=5, channels=3).init(RNGS, jnp.zeros((1, 25, 25, 3)))
  with pytest.raises(ValueError, match="does not divide"):
    depthwise.DepthwiseMAE(variant="tiny", patch=7, channels=3).init(RNGS, jnp.zeros((1, 25, 25, 3)))


def test_drop_path_field_for_finetuning(built):
  """`drop_path` (as registry.mae_family_model passes it) adds no parameters and only acts
  in encode(train=True), which needs a "dropout" rng."""
  model, variables, x, _, _, _, _, _ = built
  dp = type(model)(variant="tiny", patch=5, channels=3, drop_path=0.5)
  shapes = param_shapes(dp, x.shape)
  assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, variables["params"])

  @jax.jit
  def tokens(im):
    enc = lambda m, train: m.apply(variables, im, train=train, method="encode",  # noqa: E731
                                   rngs={"dropout": jax.random.key(2)})["tokens"]
    return enc(dp, True), enc(dp, False), enc(model, False)

  on, off, plain = map(np.asarray, tokens(x))
  np.testing.assert_allclose(off, plain, rtol=1e-6, atol=1e-6)
  assert not np.allclose(on, off)
