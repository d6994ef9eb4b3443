"""Encoder export and PyTorch (transformers ViTMAE) parity.

Tolerance used for every float comparison between the two implementations
(float32, eval mode, same weights, same images, same masking noise):

    |jax - torch| <= RTOL * |torch| + ATOL * max(|torch|)     elementwise,
    RTOL = 1e-5, ATOL = 1e-5

i.e. 1e-5 relative, plus an absolute slack of 1e-5 of the array's largest
magnitude: a strict elementwise 1e-5 relative bound is not attainable for
elements that are near zero after cancellations (a LayerNorm output or a
prediction close to 0 carries the absolute rounding error of its inputs,
~1e-7 of the array's scale, which is far more than 1e-5 of its own size).
Masks and restore indices must be equal exactly; parameter round trips
through files must be bit-exact. The largest differences measured are printed
(run with -s) and quoted in docs/export.md.
"""

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch parity needs torch (test extra)")
transformers = pytest.importorskip("transformers", reason="parity needs transformers (test extra)")
pytest.importorskip("safetensors", reason="safetensors export needs safetensors (test extra)")

from mae_jax import export  # noqa: E402
from mae_jax.models import mae as mae_lib  # noqa: E402
from mae_jax.models import vit  # noqa: E402
from mae_jax.tasks import mae as mae_task  # noqa: E402
from mae_jax.tasks.targets import pixels  # noqa: E402

RTOL = 1e-5
ATOL = 1e-5  # times max |reference|

SHAPES = {
    # name: (variant, patch, image H=W, channels)
    "tiny": ("tiny", 5, 25, 3),
    "e2e-base": ("e2e-base", 5, 125, 8),
}

SHAPE_OF = {v[0]: k for k, v in SHAPES.items()}

torch.set_num_threads(min(2, os.cpu_count() or 1))


def close(name, got, want):
  got = np.asarray(got, np.float64)
  want = np.asarray(want, np.float64)
  assert got.shape == want.shape, (name, got.shape, want.shape)
  scale = float(np.max(np.abs(want)))
  diff = np.abs(got - want)
  bound = RTOL * np.abs(want) + ATOL * scale
  print(f"{name}: max|diff| {diff.max():.3g} (scale {scale:.3g}, "
        f"max rel-to-scale {diff.max() / max(scale, 1e-30):.3g})")
  assert np.all(diff <= bound), (
      f"{name}: {int(np.sum(diff > bound))} elements over tolerance, max |diff| {diff.max():.3g}, "
      f"scale {scale:.3g}")
  return float(diff.max())


def randomize(params, seed):
  """Init params plus noise, so that LayerNorm scales/biases and zero biases are all distinct."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: (np.asarray(x) + 0.05 * rng.standard_normal(x.shape)).astype(np.float32), params)


@functools.lru_cache(maxsize=None)
def _model(shape, norm_pix_loss=False):
  variant, patch, hw, c = SHAPES[shape]
  model = mae_lib.MAE(variant=variant, patch=patch, channels=c, mask_ratio=0.75,
                      norm_pix_loss=norm_pix_loss)
  return model, (hw, hw, c)


@functools.lru_cache(maxsize=None)
def _init(shape):
  model, image_shape = _model(shape)
  init = jax.jit(lambda: model.init({"params": jax.random.key(0), "masking": jax.random.key(1)},
                                    jnp.zeros((1, *image_shape)), train=False)["params"])
  return jax.tree.map(np.asarray, init())


@functools.lru_cache(maxsize=None)
def _jitted(shape, norm_pix_loss=False):
  """Jitted `MAE.__call__` (eval mode) and `MAE.encode`: eager dispatch is slow on CPU."""
  model, _ = _model(shape, norm_pix_loss)
  targets = pixels.Targets.for_model(model)  # the MAE task's loss, as transformers' (loss, aux)
  fwd = jax.jit(lambda p, x, z: (lambda out: (mae_task.objective(targets, out, x), out[1]))(
      model.apply({"params": p}, x, noise=z, train=False)))
  enc = jax.jit(lambda p, x: model.apply({"params": p}, x, method=mae_lib.MAE.encode))
  return fwd, enc


def make(shape, seed=0, batch=2, norm_pix_loss=False):
  """(model, randomised params, image shape, images, masking noise) for a test shape."""
  model, image_shape = _model(shape, norm_pix_loss)
  params = randomize(_init(shape), seed + 1)
  rng = np.random.default_rng(seed)
  images = (rng.exponential(1.0, (batch, *image_shape)) * (rng.random((batch, *image_shape)) < 0.2))
  images = images.astype(np.float32)
  n = (image_shape[0] // model.patch) ** 2
  noise = rng.random((batch, n)).astype(np.float32)
  return model, params, image_shape, images, noise


def apply(model, params, images, noise):
  fwd, _ = _jitted(SHAPE_OF[model.variant], model.norm_pix_loss)
  return fwd(params, jnp.asarray(images), jnp.asarray(noise))


def encode(model, params, images):
  _, enc = _jitted(SHAPE_OF[model.variant], model.norm_pix_loss)
  return enc(params, jnp.asarray(images))


def hf_pretraining(model, image_shape, sd):
  hf = transformers.ViTMAEForPreTraining(export.vitmae_config(model, image_shape)).eval()
  hf.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  return hf


def run_hf(hf, images, noise):
  pix = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  nz = torch.from_numpy(noise)
  with torch.no_grad():
    out = hf(pixel_values=pix, noise=nz)
    latent = hf.vit(pix, noise=nz).last_hidden_state
  return out, latent


def hf_sincos(dim, grid):
  """transformers' ViTMAE position table (its `initialize_weights`, with the h/w rotation)."""
  from transformers.models.vit_mae import modeling_vit_mae
  pe = modeling_vit_mae.build_2d_sinusoidal_position_embedding(grid, grid, dim, cls_token=True)
  return torch.cat([pe[..., dim // 2:], pe[..., :dim // 2]], dim=-1)[None]


def compare_pretraining(tag, model, params, images, noise, out, latent):
  loss, aux = apply(model, params, images, noise)
  np.testing.assert_array_equal(np.asarray(aux["mask"]), out.mask.numpy())
  np.testing.assert_array_equal(np.asarray(aux["ids_restore"]), out.ids_restore.numpy())
  return {"latent": close(f"{tag} latent", aux["latent"], latent.numpy()),
          "pred": close(f"{tag} pred", aux["pred"], out.logits.numpy()),
          "loss": close(f"{tag} loss", loss, out.loss.numpy())}


# tiny runs the same name map and parity check in the default suite; e2e-base is `slow`
@pytest.mark.parametrize("shape", ["tiny", pytest.param("e2e-base", marks=pytest.mark.slow)])
def test_jax_to_hf_pretraining_parity(shape):
  model, params, image_shape, images, noise = make(shape)
  sd = export.to_torch_state_dict(params, (image_shape[0] // model.patch,) * 2, full=True)
  hf = hf_pretraining(model, image_shape, sd)
  if shape == "e2e-base":  # the reference model size (../shared/REFERENCE.md)
    assert sum(p.numel() for p in hf.parameters() if p.requires_grad) == 4_827_336
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == 4_827_336
  out, latent = run_hf(hf, images, noise)
  compare_pretraining(shape, model, params, images, noise, out, latent)


def test_hf_to_jax_pretraining_parity():
  """Reverse: random PyTorch weights -> mae_jax params -> same outputs."""
  model, _, image_shape, images, noise = make("tiny", seed=3)
  torch.manual_seed(0)
  hf = transformers.ViTMAEForPreTraining(export.vitmae_config(model, image_shape)).eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if "pos_embed" in name or "position_embeddings" in name:
        # transformers 5 leaves these zero in a model built from a config (a real checkpoint
        # holds them): fill them with transformers' own sin-cos formula, which must be
        # bit-identical to mae_jax's table.
        p.copy_(hf_sincos(p.shape[-1], 5))
        np.testing.assert_array_equal(p.numpy()[0], vit.sincos_2d(p.shape[-1], (5, 5)))
      else:
        p.add_(0.05 * torch.randn_like(p))
  params = export.from_torch_state_dict(hf.state_dict())
  assert set(params) == {"encoder", "decoder"}
  ref = _init("tiny")
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, ref)
  out, latent = run_hf(hf, images, noise)
  compare_pretraining("hf->jax", model, params, images, noise, out, latent)


def test_norm_pix_loss_variance_convention():
  """With norm_pix_loss, transformers (like the MAE reference) normalises targets with the
  unbiased variance (torch.var); so does mae_jax (mae.patch_stats): losses agree to 1e-5."""
  model, params, image_shape, images, noise = make("tiny", seed=5, norm_pix_loss=True)
  sd = export.to_torch_state_dict(params, (5, 5), full=True)
  hf = hf_pretraining(model, image_shape, sd)
  out, latent = run_hf(hf, images, noise)
  loss, aux = apply(model, params, images, noise)
  close("norm_pix pred", aux["pred"], out.logits.numpy())
  rel = abs(float(loss) - float(out.loss)) / float(out.loss)
  print(f"norm_pix_loss: mae_jax {float(loss):.6f} vs transformers {float(out.loss):.6f} "
        f"(rel {rel:.2e})")
  assert rel < 1e-5


@pytest.mark.parametrize("shape", ["tiny", "e2e-base"])
def test_exported_encoder_features_in_torch(shape, tmp_path):
  """safetensors export -> ViTMAEModel (mask ratio 0, ordered noise) == MAE.encode."""
  from safetensors.torch import load_file
  model, params, image_shape, images, _ = make(shape, seed=7)
  spec = export.model_spec(model, image_shape)
  path = str(tmp_path / "enc.safetensors")
  sidecar = export.export_encoder(params, spec, "safetensors", path, step=0)
  config = transformers.ViTMAEConfig(**sidecar["transformers"]["config"])
  assert config.mask_ratio == 0.0
  enc = transformers.ViTMAEModel(config).eval()
  enc.load_state_dict(load_file(path), strict=True)
  b, n = images.shape[0], spec["num_patches"]
  with torch.no_grad():
    out = enc(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
              noise=torch.arange(n, dtype=torch.float32).expand(b, n))
  tokens = out.last_hidden_state.numpy()
  feats = encode(model, params, images)
  close(f"{shape} encode tokens", feats["tokens"], tokens)
  close(f"{shape} encode cls", feats["cls"], tokens[:, 0])
  close(f"{shape} encode mean", feats["mean"], tokens[:, 1:].mean(1))
  if shape == "tiny":  # ViTModel: same names plus a pooler (left out), learned-style table
    vit = transformers.ViTModel(export.vit_config(spec), add_pooling_layer=False).eval()
    vit.load_state_dict(load_file(path), strict=True)
    with torch.no_grad():
      vt = vit(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).last_hidden_state.numpy()
    close("tiny ViTModel tokens", feats["tokens"], vt)


def test_legacy_and_timm_names_round_trip():
  _, params, _, _, _ = make("tiny", seed=9)
  for scheme in ("hf", "hf_legacy", "timm"):
    sd = export.to_torch_state_dict(params, (5, 5), scheme=scheme, full=True)
    assert export.detect_scheme(sd) == scheme
    back = export.from_torch_state_dict(sd)
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
    names = export.name_map(2, 1, scheme)
    assert set(names) == set(sd)
  legacy = export.to_torch_state_dict(params, (5, 5), scheme="hf_legacy")
  assert "encoder.layer.1.attention.attention.query.weight" in legacy
  assert "encoder.layer.0.intermediate.dense.weight" in legacy
  timm = export.to_torch_state_dict(params, (5, 5), scheme="timm")
  assert timm["blocks.0.attn.qkv.weight"].shape == (192, 64)
  assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight"} <= set(timm)
  # a learned (non sin-cos) position table cannot be carried over
  bad = dict(timm, pos_embed=timm["pos_embed"] + 0.1)
  with pytest.raises(ValueError, match="sin-cos"):
    export.from_torch_state_dict(bad)


def test_file_round_trips_bit_exact(tmp_path):
  """JAX -> safetensors -> PyTorch model -> state dict -> file -> JAX, and npz / msgpack / torch."""
  from safetensors.torch import load_file, save_file
  model, params, image_shape, _, _ = make("tiny", seed=11)
  spec = export.model_spec(model, image_shape)
  want = jax.tree.map(np.asarray, params["encoder"])
  p1 = str(tmp_path / "a.safetensors")
  sidecar = export.export_encoder(params, spec, "safetensors", p1)
  enc = transformers.ViTMAEModel(transformers.ViTMAEConfig(**sidecar["transformers"]["config"]))
  enc.load_state_dict(load_file(p1), strict=True)
  p2 = str(tmp_path / "b.safetensors")
  save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, p2)
  got, _ = export.load_encoder(p2, fmt="safetensors")
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert jax.tree.map(lambda x: x.dtype, got) == jax.tree.map(lambda x: x.dtype, want)
  for fmt in ("npz", "msgpack", "torch", "safetensors"):
    path = str(tmp_path / f"enc.{fmt}")
    export.export_encoder(params, spec, fmt, path)
    got, side = export.load_encoder(path)
    assert side["format"] == fmt
    jax.tree.map(np.testing.assert_array_equal, got, want)
  with np.load(str(tmp_path / "enc.npz")) as z:
    assert "encoder/block_01/attn/qkv/kernel" in z.files
    assert z["encoder/pos_embed"].shape == (1, 26, 64)
    assert all(z[k].dtype == np.float32 for k in z.files)


@pytest.mark.parametrize("mode", ["none", "div255", "log1p", "zscore", "log1p_zscore"])
def test_sidecar_normalization_is_the_pipelines(mode):
  """The sidecar path (input_spec -> normalize_images) computes what the training pipeline
  computes (mae_jax.data.meta.normalize), for every normalisation mode."""
  from mae_jax.data import meta as meta_lib
  rng = np.random.default_rng(0)
  meta = {"channel_names": ["a", "b", "c"],
          "channel_stats": {"mean": [0.5, 1.0, -0.2], "std": [1.0, 0.0, 2.0],
                            "log1p_mean": [0.1, 0.2, 0.0], "log1p_std": [0.5, 1e-9, 1.5]}}
  x = (rng.exponential(1.0, (2, 25, 25, 3)) * rng.choice([-1, 1], (2, 25, 25, 3)))
  x = x.astype(np.float32)
  side = json.loads(json.dumps(export.input_spec(meta, mode)))  # as a sidecar file holds it
  assert side["formula"] == meta_lib.FORMULAS[mode]
  got = export.normalize_images(x, side)
  want = meta_lib.normalize(x, mode, meta["channel_stats"])
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["mae", "convmae"])
def test_load_run_keeps_model_settings(name, tmp_path):
  """load_run builds the model through the registry from the saved config, so the run's
  compute dtype and attention kernel survive (not the class defaults)."""
  from helpers import load_config
  c = load_config()
  c.model.name, c.model.attention, c.model.dtype = name, "xla", "bfloat16"
  with open(tmp_path / "config.json", "w") as f:
    f.write(c.to_json_best_effort())
  run = export.load_run(str(tmp_path), image_shape=(25, 25, 3))
  assert run["model"].attention == "xla"
  assert jnp.dtype(run["model"].dtype) == jnp.bfloat16
  assert export.model_name(run["model"]) == name
  c.model.name = "classifier"
  with open(tmp_path / "config.json", "w") as f:
    f.write(c.to_json_best_effort())
  with pytest.raises(ValueError, match="export the pretraining run"):
    export.load_run(str(tmp_path), image_shape=(25, 25, 3))


# ----------------------------------------------------------------------------- CLI end to end


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  from helpers import converted_dataset, load_config
  from mae_jax import trainer
  d = tmp_path_factory.mktemp("export_run")
  dataset = converted_dataset(d, n=(16, 8, 8))
  c = load_config(batch_size=8, total_steps=2, warmup_steps=1, ckpt_every=1, log_every=1,
                  keep_ckpts=5, figures=False)
  c.data.dir = dataset
  c.data.shuffle_buffer = 16
  c.data.eval_split = ""
  if "test_split" in c.data:  # no end-of-run test evaluation: only the checkpoints matter here
    c.data.test_split = ""
  c.data.normalization = "log1p_zscore"
  trainer.train_and_evaluate(c, str(d / "wd"))
  return str(d / "wd"), dataset


def test_cli_end_to_end(trained_workdir, tmp_path):
  workdir, data_dir = trained_workdir
  out = str(tmp_path / "enc.safetensors")
  assert export.main(["--workdir", workdir, "--format", "safetensors", "--output", out]) == 0
  with open(out + ".json") as f:
    side = json.load(f)
  with open(os.path.join(data_dir, "mae_jax_meta.json")) as f:
    meta = json.load(f)
  assert side["checkpoint_step"] == 2 and side["format"] == "safetensors"
  assert side["mae_jax_version"] == __import__("mae_jax").__version__
  m = side["model"]
  assert (m["variant"], m["patch"], m["image_shape"], m["width"], m["depth"], m["heads"]) == \
      ("tiny", 5, [25, 25, 3], 64, 2, 4)
  assert m["layer_norm_eps"] == 1e-6 and m["mlp_ratio"] == 4.0
  assert side["input"]["normalization"] == "log1p_zscore"
  assert side["input"]["channel_stats"] == meta["channel_stats"]
  assert not side["input"]["stats_missing"]
  assert side["param_names"]["layers.0.attention.k_proj.weight"].startswith(
      "params/encoder/block_00/attn/qkv/kernel[:, 1*D:2*D].T")

  # the exported weights are those of the checkpoint, step 1 differs from step 2
  from mae_jax.export import load_run, restore_params
  run = load_run(workdir)
  params, step = restore_params(workdir, run["model"], run["image_shape"])
  got, _ = export.load_encoder(out)
  jax.tree.map(np.testing.assert_array_equal, got, params["encoder"])
  out1 = str(tmp_path / "enc1.npz")
  assert export.main(["--workdir", workdir, "--step", "1", "--format", "npz", "--output", out1]) == 0
  got1, side1 = export.load_encoder(out1)
  assert side1["checkpoint_step"] == 1
  assert not np.array_equal(got1["cls_token"], got["cls_token"])

  # normalisation reproduced from the sidecar alone
  x = np.random.default_rng(0).exponential(1.0, (2, 25, 25, 3)).astype(np.float32)
  stats = meta["channel_stats"]
  want = (np.log1p(x) - np.float32(stats["log1p_mean"])) / np.float32(stats["log1p_std"])
  np.testing.assert_allclose(export.normalize_images(x, side["input"]), want, rtol=1e-6)


def test_cli_without_dataset_needs_image_shape(trained_workdir, tmp_path):
  workdir, _ = trained_workdir
  moved = tmp_path / "wd"
  import shutil
  shutil.copytree(workdir, moved)
  with open(moved / "config.json") as f:
    cfg = json.load(f)
  cfg["data"]["dir"] = str(tmp_path / "gone")
  with open(moved / "config.json", "w") as f:
    json.dump(cfg, f)
  out = str(tmp_path / "enc.msgpack")
  assert export.main(["--workdir", str(moved), "--format", "msgpack", "--output", out]) == 2
  assert export.main(["--workdir", str(moved), "--format", "msgpack", "--output", out,
                      "--image-shape", "25,25,3"]) == 0
  got, side = export.load_encoder(out)
  assert side["input"]["stats_missing"] and side["input"]["channel_stats"] is None
  assert "missing" in side["input"]["note"]
  assert got["patch_embed"]["proj"]["kernel"].shape == (5, 5, 3, 64)


# convmae (conv stages + ViT stage) stands for depthwise / convstem in the default suite;
# channel_mae has a name map of its own and stays in it
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n in ("depthwise_mae", "convstem_mae") else n
                                  for n in ("depthwise_mae", "convstem_mae", "convmae",
                                            "channel_mae")])
def test_hybrid_encoders_export_with_flax_names(name, tmp_path):
  """Every hybrid family exports its checkpointed encoder in every format (flax names);
  the files load back bit-exact and give the checkpoint's features; PyTorch ViT names
  are refused with exit code 2. The workdir is written as the trainer writes it (config.json
  and an Orbax checkpoint of the initial state): compiling each family's train step would
  add nothing to what is tested here (the trainer -> export chain: test_cli_end_to_end)."""
  from helpers import converted_dataset, load_config
  from mae_jax import checkpoint, experiment, parallel
  from mae_jax.models import registry
  dataset = converted_dataset(tmp_path, n=(8, 4, 4))
  c = load_config(batch_size=8, total_steps=1, warmup_steps=1)
  c.model.name = name
  c.data.dir = dataset
  workdir = str(tmp_path / "wd")
  mesh = parallel.make_mesh(c.mesh)
  pipe = experiment.make_pipeline(c)
  setup = experiment.create_state(c, experiment.build_model(c, pipe.image_shape), mesh,
                                  pipe.image_shape)
  checkpoint.write_config(workdir, c)
  mngr = checkpoint.manager(workdir, 1)
  checkpoint.save(mngr, 1, setup.state)
  mngr.wait_until_finished()
  run = export.load_run(workdir)
  assert type(run["model"]) is registry.MAE_FAMILY[name]
  params, _ = export.restore_params(workdir, run["model"], run["image_shape"])
  x = jnp.asarray(np.random.default_rng(0).exponential(1.0, (2, 25, 25, 3)), jnp.float32)
  encode = jax.jit(lambda p: run["model"].apply({"params": p}, x, method="encode")["tokens"])
  want = encode(params)
  for fmt in (f for f in export.FORMATS if f != "hf"):  # hf: transformers' ViTMAE only
    out = str(tmp_path / f"enc.{fmt}")
    assert export.main(["--workdir", workdir, "--format", fmt, "--output", out]) == 0
    got, side = export.load_encoder(out)
    jax.tree.map(np.testing.assert_array_equal, got, params["encoder"])
    assert side["model"]["model"] == name and side["name_scheme"] == "flax"
    np.testing.assert_array_equal(np.asarray(encode({**params, "encoder": got})), np.asarray(want))
  assert export.main(["--workdir", workdir, "--format", "safetensors", "--names", "hf",
                      "--output", str(tmp_path / "hf.safetensors")]) == 2
  assert export.main(["--workdir", workdir, "--format", "hf", "--output", str(tmp_path / "d")]) == 2


def test_sparse_features_in_transformers_one_jet_at_a_time(tmp_path):
  """A sparse-token encoder exports like a dense one (same parameters); transformers'
  ViTMAEModel reproduces its features jet by jet: noise ranks the occupied patches first,
  in patch order, and mask_ratio = 1 - (K + 0.5) / N keeps exactly the K occupied ones."""
  from safetensors.torch import load_file
  from mae_jax.models import sparse
  model, params, image_shape, _, _ = make("tiny", seed=11)
  rng = np.random.default_rng(4)
  images = np.zeros((2, *image_shape), np.float32)
  for b, hits in enumerate((6, 13)):  # very sparse jets: a few occupied patches each
    rows, cols = rng.integers(0, image_shape[0], (2, hits))
    images[b, rows, cols] = rng.exponential(1.0, (hits, image_shape[-1]))
  sp = sparse.SparseMAE(variant=model.variant, patch=model.patch, channels=image_shape[-1])
  ids = sparse.occupied_patch_ids(jnp.asarray(images), model.patch)
  feats = sp.apply({"params": params}, jnp.asarray(images), patch_ids=ids, method=sp.encode)
  spec = export.model_spec(model, image_shape)
  path = str(tmp_path / "enc.safetensors")
  sidecar = export.export_encoder(params, spec, "safetensors", path, step=0)
  n = spec["num_patches"]
  for b in range(2):
    occupied = np.asarray(ids[b][ids[b] >= 0])
    k = len(occupied)
    config = transformers.ViTMAEConfig(**{**sidecar["transformers"]["config"],
                                          "mask_ratio": 1.0 - (k + 0.5) / n})
    enc = transformers.ViTMAEModel(config).eval()
    enc.load_state_dict(load_file(path), strict=True)
    noise = np.full((1, n), 2.0, np.float32)
    noise[0, occupied] = np.arange(k) / n  # occupied first, in patch order
    with torch.no_grad():
      out = enc(torch.from_numpy(images[b:b + 1].transpose(0, 3, 1, 2).copy()),
                noise=torch.from_numpy(noise)).last_hidden_state.numpy()
    assert out.shape[1] == 1 + k
    close(f"sparse jet {b} tokens", np.asarray(feats["tokens"][b:b + 1, :1 + k]), out)


def test_sparse_model_has_the_dense_vit_spec():
  """A sparse-token MAE is the ViT MAE's parameters: same registry name and transformers
  config (bench --torch and export build PyTorch twins from it)."""
  from mae_jax.models import sparse
  dense, _, image_shape, _, _ = make("tiny")
  fields = {f: getattr(dense, f) for f in ("variant", "patch", "channels", "mask_ratio", "norm_pix_loss")}
  sparse_model = sparse.SparseMAE(**fields)
  assert export.model_name(sparse_model) == "mae"
  assert (export.vitmae_config(sparse_model, image_shape).to_dict()
          == export.vitmae_config(dense, image_shape).to_dict())


def test_dec_depth_reaches_the_spec_and_transformers():
  """model.dec_depth changes the decoder the spec (and transformers' config) describes: the
  full state dict of a tiny MAE with 3 decoder blocks loads strictly and predicts the same."""
  _, _, image_shape, images, noise = make("tiny")
  model = mae_lib.MAE(variant="tiny", patch=5, channels=3, mask_ratio=0.75, dec_depth=3)
  params = model.init({"params": jax.random.key(0), "masking": jax.random.key(1)},
                      jnp.zeros((1, *image_shape)), train=False)["params"]
  params = randomize(jax.tree.map(np.asarray, params), 1)
  assert export.model_spec(model, image_shape)["dec_depth"] == 3
  hf = hf_pretraining(model, image_shape, export.to_torch_state_dict(params, (5, 5), full=True))
  out, _ = run_hf(hf, images, noise)
  _, aux = model.apply({"params": params}, jnp.asarray(images), noise=jnp.asarray(noise),
                       train=False)
  close("dec_depth=3 pred", aux["pred"], out.logits.numpy())


def test_sparse_encoder_features_in_torch_match_jet_by_jet(tmp_path):
  """The sparse-token encoder's features (occupied patches only) from the exported weights in
  transformers' ViTMAEModel == SparseMAE.encode, jet by jet; the sidecar says so."""
  from safetensors.torch import load_file

  from mae_jax.models import sparse as sparse_lib
  model, params, image_shape, _, _ = make("tiny", seed=3)
  smodel = sparse_lib.SparseMAE(variant=model.variant, patch=model.patch,
                                channels=image_shape[2], mask_ratio=0.75)
  rng = np.random.default_rng(5)
  images = np.zeros((4, *image_shape), np.float32)  # a few occupied patches per jet
  for i, k in enumerate((1, 3, 9, 20)):
    hit = rng.choice(image_shape[0] * image_shape[1], k, replace=False)
    images[i].reshape(-1, image_shape[2])[hit] = rng.exponential(2.0, (k, image_shape[2]))
  spec = export.model_spec(smodel, image_shape)
  assert spec["model"] == "mae" and spec["tokens"] == "sparse"
  path = str(tmp_path / "enc.safetensors")
  sidecar = export.export_encoder(params, spec, "safetensors", path, step=0)
  assert sidecar["features"]["token_mode"] == "sparse"
  assert "occupied" in sidecar["features"]["mean"] and "tokens='sparse'" in \
      sidecar["features"]["pytorch"]
  enc = transformers.ViTMAEModel(transformers.ViTMAEConfig(**sidecar["transformers"]["config"]))
  enc.eval().load_state_dict(load_file(path), strict=True)
  got = export.torch_features(enc, images, patch=model.patch, tokens="sparse")
  want = jax.jit(lambda p, x: smodel.apply({"params": p}, x, method=smodel.encode))(
      params, jnp.asarray(images))
  for i in range(images.shape[0]):  # jet by jet, |diff| <= 1e-5 (relative to the scale)
    n_occ = int(np.asarray(want["valid"][i]).sum()) - 1
    assert got["num_tokens"][i] == n_occ
    close(f"jet {i} mean ({n_occ} tokens)", np.asarray(want["mean"][i]), got["mean"][i])
    close(f"jet {i} cls", np.asarray(want["cls"][i]), got["cls"][i])
  dense = export.torch_features(enc, images, patch=model.patch, tokens="dense")
  assert np.abs(dense["mean"] - got["mean"]).max() > 1e-2  # the recipe matters


def test_hf_directory_loads_with_from_pretrained(tmp_path):
  """--format hf: config.json + model.safetensors + normalization.json + a model card, loaded by
  ViTMAEModel.from_pretrained; its features == MAE.encode at 1e-5."""
  model, params, image_shape, images, _ = make("tiny", seed=11)
  spec = export.model_spec(model, image_shape)
  meta = {"inputs": ["/data/qg.h5"], "label_names": ["quark", "gluon"],
          "channel_names": ["tracks", "ecal", "hcal"],
          "channel_stats": {"log1p_mean": [0.1] * 3, "log1p_std": [0.5] * 3}}
  (tmp_path / "results.json").write_text(json.dumps({"probe": {"test_auc": 0.8125}}))
  out = tmp_path / "hf"
  export.export_encoder(params, spec, "hf", str(out), step=7,
                        input=export.input_spec(meta, "log1p_zscore"), meta=meta,
                        extra={"workdir": str(tmp_path / "pretrain")})
  assert {"config.json", "model.safetensors", "normalization.json", "README.md",
          "mae_jax.json"} <= set(os.listdir(out))
  card = (out / "README.md").read_text()
  assert "/data/qg.h5" in card and "token mode: **dense**" in card and "0.8125" in card
  norm = json.loads((out / "normalization.json").read_text())
  assert norm["normalization"] == "log1p_zscore" and norm["channel_stats"] == meta["channel_stats"]
  enc = transformers.ViTMAEModel.from_pretrained(str(out)).eval()
  got = export.torch_features(enc, images, patch=model.patch, tokens="dense")
  want = encode(model, params, images)
  close("hf from_pretrained mean", np.asarray(want["mean"]), got["mean"])
  close("hf from_pretrained cls", np.asarray(want["cls"]), got["cls"])


def test_safetensors_without_the_torch_extra_is_one_line_exit_2(tmp_path):
  """With torch, transformers and safetensors hidden (as without mae_jax[torch]), the export
  CLI names the extra in one line and exits 2."""
  w = tmp_path / "w"
  w.mkdir()
  (w / "config.json").write_text("{}")
  code = textwrap.dedent(f"""
      import sys
      class Block:
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] in ("torch", "transformers", "safetensors"):
            raise ModuleNotFoundError(f"No module named {{name!r}}")
      sys.meta_path.insert(0, Block())
      from mae_jax.export import formats
      from unittest import mock
      import mae_jax.export.cli as cli
      run = {{"model": None, "image_shape": (25, 25, 3), "config": {{}}, "meta": None,
              "data_dir": ""}}
      with mock.patch.object(cli.run_lib, "load_run", return_value=run), \\
           mock.patch.object(cli.run_lib, "restore_params", return_value=({{}}, 1)), \\
           mock.patch.object(cli.specs, "model_spec", return_value={{"model": "mae"}}):
        sys.exit(cli.main(["--workdir", {str(w)!r}, "--format", "safetensors",
                           "--output", {str(tmp_path / "e.safetensors")!r}]))
  """)
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 2, r.stderr[-2000:]
  err = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert err[-1] == ("error: --format safetensors needs the Python package 'safetensors', "
                     "which is not installed: pip install 'mae_jax[torch]'"), r.stderr[-2000:]
  assert "Traceback" not in r.stderr
