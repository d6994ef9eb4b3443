"""What an exported encoder is: its model spec and the matching PyTorch configs.

`model_spec` is a plain JSON-able dict (the sidecar's `model` block), so the
transformers and timm configs below can be rebuilt from a sidecar alone, without
this project's config files. Only the plain ViT MAE has a transformers/timm
counterpart; hybrid encoders get a spec that says how to rebuild them from the
registry.
"""

from __future__ import annotations

from typing import Mapping

from mae_jax.errors import UsageError
from mae_jax.models import registry
from mae_jax.models import vit

# The ViTConfig keyword arguments are the ViTMAEConfig ones without the decoder/masking.
_VIT_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
             "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias")


def model_name(model) -> str:
  """The registry name (config model.name) of an MAE-family model instance.

  Raises:
    ValueError: `model` is not an instance of a `registry.MAE_FAMILY` class.
  """
  for name, cls in registry.MAE_FAMILY.items():
    if type(model) is cls:
      return name
  if isinstance(model, registry.MAE_FAMILY["mae"]):  # the sparse-token MAE: same parameters
    return "mae"
  raise UsageError(f"{type(model).__name__} is not an MAE-family model "
                   f"({sorted(registry.MAE_FAMILY)})")


def model_spec(model, image_shape) -> dict:
  """Everything needed to rebuild the encoder (and decoder) without config files.

  Args:
    model: an MAE-family model instance.
    image_shape: (H, W, C) of the input images.

  Returns:
    A JSON-able dict. For the ViT MAE it holds every size transformers and timm need;
    for a hybrid, its registry name, variant and how to rebuild it.
  """
  h, w, c = (int(s) for s in image_shape)
  grid = (h // model.patch, w // model.patch)
  name = model_name(model)
  # the sparse-token MAE has the ViT MAE's parameters but encodes occupied patches only
  tokens = "sparse" if type(model).__name__ == "SparseMAE" else "dense"
  common = {"model": name, "tokens": tokens, "variant": model.variant, "patch": int(model.patch),
            "image_shape": [h, w, c], "channels": c, "grid": list(grid),
            "num_patches": grid[0] * grid[1]}
  if name != "mae":  # hybrids: rebuilt from the registry class, not from sizes
    return {
        **common, "mask_ratio": float(model.mask_ratio),
        "norm_pix_loss": bool(model.norm_pix_loss),
        "rebuild": f"mae_jax.models.registry.MAE_FAMILY[{name!r}](variant={model.variant!r}, "
                   f"patch={int(model.patch)}, channels={c}); its params['encoder'] = the file",
        "layouts": "flax: Dense kernels [in, out], conv kernels [kh, kw, in/groups, out], "
                   "LayerNorm scale/bias",
    }
  size, _ = model.model_size()  # the variant's sizes with model.dec_depth applied
  return {
      **common,
      "width": size.width, "depth": size.depth, "heads": size.heads,
      "head_dim": size.width // size.heads, "mlp_ratio": float(size.mlp_ratio),
      "mlp_hidden": int(size.width * size.mlp_ratio),
      "dec_width": size.dec_width, "dec_depth": size.dec_depth, "dec_heads": size.dec_heads,
      "dec_mlp_hidden": int(size.dec_width * size.mlp_ratio),
      "layer_norm_eps": vit.LN_EPS, "activation": "gelu (exact, erf)", "qkv_bias": True,
      "pre_norm": True, "cls_token": True,
      "pos_embed": "fixed 2-D sin-cos, mae_jax.models.vit.sincos_2d(width, grid): "
                   "[sin(col) | cos(col) | sin(row) | cos(row)], zero row for CLS",
      "token_order": "CLS, then patches row-major over the (H/p, W/p) grid",
      "patch_pixel_order": "(row, col, channel) inside a patch",
      "mask_ratio": float(model.mask_ratio), "norm_pix_loss": bool(model.norm_pix_loss),
  }


def hf_config_kwargs(spec: Mapping, mask_ratio: float | None = None) -> dict:
  """Keyword arguments of `transformers.ViTMAEConfig` for a ViT MAE `model_spec`.

  Args:
    spec: a `model_spec` dict (or a sidecar's `model` block).
    mask_ratio: overrides the spec's (the exported encoder uses 0.0).

  Returns:
    A plain dict, JSON-able, so the sidecar can carry it.
  """
  h, w, c = spec["image_shape"]
  return dict(
      hidden_size=spec["width"], num_hidden_layers=spec["depth"],
      num_attention_heads=spec["heads"], intermediate_size=spec["mlp_hidden"],
      hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      layer_norm_eps=spec["layer_norm_eps"], image_size=h if h == w else [h, w],
      patch_size=spec["patch"], num_channels=c, qkv_bias=True,
      decoder_hidden_size=spec["dec_width"], decoder_num_hidden_layers=spec["dec_depth"],
      decoder_num_attention_heads=spec["dec_heads"],
      decoder_intermediate_size=spec["dec_mlp_hidden"],
      mask_ratio=float(spec["mask_ratio"] if mask_ratio is None else mask_ratio),
      norm_pix_loss=bool(spec["norm_pix_loss"]))


def _as_spec(model_or_spec, image_shape=None) -> Mapping:
  """A ViT MAE spec (the transformers/timm configs exist only for the plain ViT)."""
  if isinstance(model_or_spec, Mapping):
    spec = model_or_spec
  elif image_shape is None:
    raise ValueError("pass image_shape (H, W, C) with a model")
  else:
    spec = model_spec(model_or_spec, image_shape)
  if spec.get("model", "mae") != "mae":
    raise UsageError(f"a {spec['model']!r} model has no transformers/timm counterpart; "
                     "export it with names 'flax' (docs/export.md, Hybrid encoders)")
  return spec


def vitmae_config(model_or_spec, image_shape=None, mask_ratio: float | None = None):
  """The matching `transformers.ViTMAEConfig` (ViTMAEModel / ViTMAEForPreTraining).

  transformers' ViTMAE builds its sin-cos tables for square grids only: non-square
  images raise here (use `vit_config` / ViTModel, whose position table is a parameter).

  Args:
    model_or_spec: a ViT `MAE` instance (then pass `image_shape`) or its `model_spec`.
    image_shape: (H, W, C), with a model.
    mask_ratio: overrides the model's.

  Raises:
    ValueError: a hybrid model, or non-square images.
  """
  import transformers  # optional dependency (the torch extra)
  spec = _as_spec(model_or_spec, image_shape)
  h, w, _ = spec["image_shape"]
  if h != w:
    raise UsageError(f"transformers' ViTMAE supports square images only, got {h}x{w}; "
                     "use vit_config() with transformers.ViTModel for the encoder")
  return transformers.ViTMAEConfig(**hf_config_kwargs(spec, mask_ratio))


def vit_config(model_or_spec, image_shape=None):
  """The matching `transformers.ViTConfig` for the encoder as a `ViTModel`.

  Args:
    model_or_spec: a ViT `MAE` instance (then pass `image_shape`) or its `model_spec`.
    image_shape: (H, W, C), with a model.
  """
  import transformers  # optional dependency (the torch extra)
  kw = hf_config_kwargs(_as_spec(model_or_spec, image_shape))
  return transformers.ViTConfig(**{k: kw[k] for k in _VIT_KEYS})


def timm_constructor(spec: Mapping) -> str:
  """The exact timm call whose `forward_features` equals `MAE.encode(...)["tokens"]`."""
  h, w, c = spec["image_shape"]
  img = h if h == w else (h, w)
  return (f"timm.models.vision_transformer.VisionTransformer(img_size={img!r}, "
          f"patch_size={spec['patch']}, in_chans={c}, num_classes=0, global_pool='token', "
          f"embed_dim={spec['width']}, depth={spec['depth']}, num_heads={spec['heads']}, "
          f"mlp_ratio={spec['mlp_ratio']}, qkv_bias=True, class_token=True, "
          "no_embed_class=False, pre_norm=False, fc_norm=False, "
          "norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), act_layer=torch.nn.GELU)")
