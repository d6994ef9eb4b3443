"""MAE model: patchify, masking, loss, position tables, parameter counts, encode()."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax.models import mae as mae_lib
from mae_jax.models import vit
from mae_jax.tasks import mae as mae_task
from mae_jax.tasks.targets import pixels

RNGS = {"params": jax.random.key(0), "masking": jax.random.key(1)}


def numpy_patchify(images, p):
  """Independent loop reference: patch (i, j) row-major, pixels (row, col, channel)."""
  b, h, w, c = images.shape
  out = np.zeros((b, (h // p) * (w // p), p * p * c), images.dtype)
  for i in range(h // p):
    for j in range(w // p):
      out[:, i * (w // p) + j] = images[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :].reshape(b, -1)
  return out


@pytest.mark.parametrize("shape,p", [((2, 125, 125, 8), 5), ((3, 20, 30, 3), 5), ((1, 32, 32, 2), 4)])
def test_patchify_matches_reference_and_round_trips(shape, p):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  patches = mae_lib.patchify(jnp.asarray(x), p)
  np.testing.assert_array_equal(np.asarray(patches), numpy_patchify(x, p))
  back = mae_lib.unpatchify(patches, p, (shape[1] // p, shape[2] // p), shape[3])
  np.testing.assert_array_equal(np.asarray(back), x)


def test_patch_must_divide_image():
  with pytest.raises(ValueError, match="patch size 4 does not divide the image size 125x125"):
    mae_lib.patchify(jnp.zeros((1, 125, 125, 8)), 4)
  with pytest.raises(ValueError, match="does not divide"):
    mae_lib.MAE(variant="tiny", patch=7, channels=8).init(RNGS, jnp.zeros((1, 125, 125, 8)))


def test_sincos_2d_matches_formula():
  dim, gh, gw = 16, 3, 5
  table = vit.sincos_2d(dim, (gh, gw))
  assert table.shape == (1 + gh * gw, dim)
  np.testing.assert_array_equal(table[0], 0.0)
  omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
  for i in range(gh):
    for j in range(gw):
      want = np.concatenate([np.sin(j * omega), np.cos(j * omega), np.sin(i * omega), np.cos(i * omega)])
      np.testing.assert_allclose(table[1 + i * gw + j], want, rtol=0, atol=1e-6)


def test_random_masking_ratio_and_restore():
  b, n, d = 4, 625, 3
  x = jnp.arange(b * n * d, dtype=jnp.float32).reshape(b, n, d)
  noise = jax.random.uniform(jax.random.key(0), (b, n))
  vis, mask, ids_restore = mae_lib.random_masking(x, 0.75, noise)
  keep = int(625 * 0.25)
  assert vis.shape == (b, keep, d)
  np.testing.assert_array_equal(np.asarray(mask.sum(1)), n - keep)
  # the kept tokens are exactly the unmasked ones, those with the smallest noise
  for i in range(b):
    kept_ids = np.sort((np.asarray(vis[i, :, 0]) - i * n * d) // d).astype(int)
    np.testing.assert_array_equal(kept_ids, np.flatnonzero(np.asarray(mask[i]) == 0))
    np.testing.assert_array_equal(kept_ids, np.sort(np.argsort(np.asarray(noise[i]))[:keep]))
  assert not np.array_equal(np.asarray(mask[0]), np.asarray(mask[1]))  # per-sample masks
  ids = np.asarray(ids_restore)
  np.testing.assert_array_equal(np.sort(ids, axis=1), np.tile(np.arange(n), (b, 1)))


def test_masked_mse_matches_float64_and_ignores_visible_patches():
  rng = np.random.default_rng(1)
  pred = rng.normal(size=(2, 10, 12)).astype(np.float32)
  target = rng.normal(size=(2, 10, 12)).astype(np.float32)
  mask = (rng.random((2, 10)) < 0.7).astype(np.float32)
  want = (((pred.astype(np.float64) - target) ** 2).mean(-1) * mask).sum() / mask.sum()
  got = float(mae_task.masked_mse(pred, target, mask))
  assert abs(got - want) <= 1e-6 * abs(want)  # float32 sum of 20 terms
  changed = target.copy()
  vis = np.argwhere(mask == 0)[0]
  changed[vis[0], vis[1]] += 100.0
  assert float(mae_task.masked_mse(pred, changed, mask)) == got
  masked = np.argwhere(mask == 1)[0]
  changed[masked[0], masked[1]] += 1.0
  assert float(mae_task.masked_mse(pred, changed, mask)) != got


def test_norm_pix_loss_reference():
  rng = np.random.default_rng(2)
  pred = rng.normal(size=(1, 4, 6)).astype(np.float32)
  target = rng.normal(size=(1, 4, 6)).astype(np.float32) * 3 + 1
  mask = np.array([[1, 0, 1, 1]], np.float32)
  t = target.astype(np.float64)
  t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True, ddof=1) + 1e-6)  # torch.var
  want = (((pred - t) ** 2).mean(-1) * mask).sum() / mask.sum()
  np.testing.assert_allclose(float(mae_task.masked_mse(pred, target, mask, True)), want, rtol=1e-5)


def test_model_loss_only_sees_masked_patches():
  """The model returns its prediction, the task's loss is the masked MSE of it against the
  image's patches (float64 reference); pixels of visible patches do not enter it."""
  model = mae_lib.MAE(variant="tiny", patch=5, channels=3)
  x = jax.random.uniform(jax.random.key(3), (2, 25, 25, 3))
  variables = model.init(RNGS, x)
  noise = jax.random.uniform(jax.random.key(4), (2, 25))
  pred, aux = out = model.apply(variables, x, noise=noise)
  np.testing.assert_array_equal(np.asarray(pred), np.asarray(aux["pred"]))
  loss = float(mae_task.objective(pixels.Targets(5), out, x))
  err = ((np.asarray(pred, np.float64) - np.asarray(mae_lib.patchify(x, 5), np.float64)) ** 2)
  mask = np.asarray(aux["mask"], np.float64)
  np.testing.assert_allclose(loss, (err.mean(-1) * mask).sum() / mask.sum(), rtol=1e-6)
  visible = mae_lib.unpatchify(jnp.repeat((1 - aux["mask"])[..., None], 75, -1), 5, (5, 5), 3)
  assert float(mae_task.objective(pixels.Targets(5), out, x + visible * 1e3)) == loss
  assert aux["latent"].shape == (2, 1 + int(25 * 0.25), 64)
  assert aux["pred"].shape == (2, 25, 75)


def test_encoder_never_sees_masked_pixels():
  """Changing masked patches of the input leaves the encoder latent unchanged."""
  model = mae_lib.MAE(variant="tiny", patch=5, channels=2)
  x = jax.random.uniform(jax.random.key(5), (1, 20, 20, 2))
  variables = model.init(RNGS, x)
  noise = jax.random.uniform(jax.random.key(6), (1, 16))
  _, aux = model.apply(variables, x, noise=noise)
  pixel_mask = mae_lib.unpatchify(jnp.repeat(aux["mask"][..., None], 50, -1), 5, (4, 4), 2)
  x2 = x + pixel_mask * 7.0
  _, aux2 = model.apply(variables, x2, noise=noise)
  np.testing.assert_array_equal(np.asarray(aux["latent"]), np.asarray(aux2["latent"]))


def count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_e2e_base_parameter_count_matches_reference():
  model = mae_lib.MAE(variant="e2e-base", patch=5, channels=8)
  shapes = jax.eval_shape(lambda: model.init(RNGS, jnp.zeros((1, 125, 125, 8))))["params"]
  assert count(shapes) == 4_827_336  # trainable, as transformers' ViTMAEForPreTraining
  assert count(shapes) + model.num_fixed_params((125, 125)) == 4_987_592  # reference table
  blk = shapes["encoder"]["block_00"]
  assert blk["attn"]["qkv"]["kernel"].shape == (128, 384)
  assert len([k for k in shapes["encoder"] if k.startswith("block_")]) == 16
  assert len([k for k in shapes["decoder"] if k.startswith("block_")]) == 8


@pytest.mark.parametrize("variant,width", [("S", 384), ("B", 768), ("L", 1024), ("B/5", 768)])
def test_standard_variants_build(variant, width):
  model = mae_lib.MAE(variant=variant, patch=5, channels=8)
  shapes = jax.eval_shape(lambda: model.init(RNGS, jnp.zeros((1, 125, 125, 8))))["params"]
  assert shapes["encoder"]["cls_token"].shape == (1, 1, width)


def test_unknown_variant_and_bad_channels():
  with pytest.raises(ValueError, match="Unknown model variant 'huge'"):
    mae_lib.MAE(variant="huge").init(RNGS, jnp.zeros((1, 25, 25, 8)))
  with pytest.raises(ValueError, match=r"images must be \[batch, H, W, 8\].*\(1, 25, 25, 3\)"):
    mae_lib.MAE(variant="tiny", channels=8).init(RNGS, jnp.zeros((1, 25, 25, 3)))


def test_encode_features():
  model = mae_lib.MAE(variant="tiny", patch=5, channels=3)
  x = jax.random.uniform(jax.random.key(7), (2, 25, 25, 3))
  variables = model.init(RNGS, x)
  f = model.apply(variables, x, method=mae_lib.MAE.encode)
  assert f["tokens"].shape == (2, 26, 64)
  np.testing.assert_allclose(np.asarray(f["cls"]), np.asarray(f["tokens"][:, 0]))
  np.testing.assert_allclose(np.asarray(f["mean"]), np.asarray(f["tokens"][:, 1:]).mean(1), rtol=1e-5,
                             atol=1e-6)
  # deterministic (no masking rng needed) and batch-independent
  f1 = model.apply(variables, x[:1], method=mae_lib.MAE.encode)
  np.testing.assert_allclose(np.asarray(f1["cls"]), np.asarray(f["cls"][:1]), rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
  model = mae_lib.MAE(variant="tiny", patch=5, channels=3, dtype=jnp.bfloat16)
  x = jax.random.uniform(jax.random.key(8), (2, 25, 25, 3))
  variables = model.init(RNGS, x)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
  out = model.apply(variables, x, rngs={"masking": jax.random.key(9)})
  loss = mae_task.objective(pixels.Targets(5), out, x)
  assert out[1]["pred"].dtype == jnp.bfloat16 and loss.dtype == jnp.float32
  assert np.isfinite(float(loss))


@pytest.mark.parametrize("name,tokens,latents", [
    ("mae", "dense", 0), ("mae", "sparse", 0), ("mae", "sparse", 4), ("depthwise_mae", "dense", 0),
    ("convstem_mae", "dense", 0), ("convmae", "dense", 0), ("channel_mae", "dense", 0)])
def test_dec_depth_sets_the_decoder_blocks_and_zero_keeps_the_variants(name, tokens, latents):
  from helpers import load_config
  from mae_jax.models import registry

  def blocks(dec_depth):
    config = load_config("pretrain", "variant=tiny", model__name=name, model__tokens=tokens,
                         model__latents=latents, model__dec_depth=dec_depth)
    model = registry.build_model(config, (25, 25, 3))
    params = jax.eval_shape(lambda: model.init(RNGS, jnp.zeros((1, 25, 25, 3)),
                                               train=False))["params"]
    decoder = params["latent_decoder" if latents else "decoder"]
    return params, sorted(k for k in decoder if k.startswith("block_"))

  default, names = blocks(0)
  assert len(names) == 1  # tiny's own decoder depth (every family's tiny has one block)
  plain = registry.MAE_FAMILY[name] if tokens == "dense" else None
  if plain is not None:  # 0 = the param tree the family builds without the field
    own = jax.eval_shape(lambda: plain(variant="tiny", patch=5, channels=3).init(
        RNGS, jnp.zeros((1, 25, 25, 3)), train=False))["params"]
    assert jax.tree.map(lambda a: a.shape, own) == jax.tree.map(lambda a: a.shape, default)
  deeper, names = blocks(3)
  assert names == ["block_00", "block_01", "block_02"]
  assert jax.tree.map(lambda a: a.shape, deeper["encoder"]) == \
      jax.tree.map(lambda a: a.shape, default["encoder"])  # the encoder is untouched


def test_a_negative_dec_depth_is_one_line():
  from helpers import load_config
  from mae_jax.models import registry
  config = load_config("pretrain", "variant=tiny", model__dec_depth=-1)
  with pytest.raises(ValueError, match=r"^model.dec_depth=-1; choose 0 \(the variant's own"):
    registry.build_model(config, (25, 25, 3))


@pytest.mark.parametrize("name,tokens", [("mae", "dense"), ("mae", "sparse"), ("convmae", "dense")])
def test_pred_init_zeros_starts_at_predict_zeros(name, tokens):
  """model.pred_init=zeros: the untrained decoder predicts exactly 0 everywhere (its first loss
  is the predict-zeros MSE); the default (xavier, the MAE reference's) predicts far from 0, and
  only the `pred` kernel differs between the two (same shapes, same other values)."""
  from helpers import load_config
  from mae_jax.models import registry

  def built(pred_init):
    config = load_config("pretrain", "variant=tiny", model__name=name, model__tokens=tokens,
                         model__pred_init=pred_init)
    return registry.build_model(config, (25, 25, 3))

  x = jax.random.uniform(jax.random.key(3), (2, 25, 25, 3))
  kwargs = {}
  if tokens == "sparse":  # every patch listed as occupied
    kwargs = {"patch_ids": jnp.asarray(np.tile(np.arange(25, dtype=np.int32), (2, 1)))}
  outs = {}
  for init in ("xavier", "zeros"):
    model = built(init)
    variables = model.init(RNGS, x, train=False, **kwargs)
    outs[init] = (variables["params"],
                  model.apply(variables, x, rngs={"masking": jax.random.key(4)}, **kwargs))
  zero_pred = np.asarray(outs["zeros"][1][1]["pred"])
  assert np.all(zero_pred == 0.0)
  assert float(np.abs(np.asarray(outs["xavier"][1][1]["pred"])).mean()) > 0.05
  from flax import traverse_util
  flat, flat0 = (traverse_util.flatten_dict(outs[i][0], sep="/") for i in ("xavier", "zeros"))
  assert flat.keys() == flat0.keys()
  differ = sorted(k for k in flat if not np.array_equal(flat[k], flat0[k]))
  assert differ == ["decoder/pred/kernel"], differ  # the bias is zero-initialised in both


def test_an_unknown_pred_init_is_one_line():
  from helpers import load_config
  from mae_jax.models import registry
  config = load_config("pretrain", "variant=tiny", model__pred_init="ones")
  with pytest.raises(ValueError, match=r"^model.pred_init='ones'; choose one of"):
    registry.build_model(config, (25, 25, 3))
  config = load_config("pretrain", "variant=tiny", model__name="channel_mae",
                       model__pred_init="zeros")
  with pytest.raises(ValueError, match=r"^model.pred_init='zeros': channel_mae"):
    registry.build_model(config, (25, 25, 3))
