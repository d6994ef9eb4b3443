r"""Encoder export and PyTorch interoperability.

CLI (encoder only, from an Orbax checkpoint of a pretraining run):

  python -m mae_jax.export --workdir DIR [--step N] \
      --format {npz,safetensors,msgpack,torch} --output PATH [--names {hf,hf_legacy,timm}] \
      [--image-shape H,W,C]

writes PATH and a JSON sidecar PATH.json (model config, input normalisation with
the dataset's channel statistics, checkpoint step, format, parameter name map,
mae_jax version). See docs/export.md.

Formats:
  npz          flat "/"-joined flax names ("encoder/block_00/attn/qkv/kernel", big_vision
               convention), float32, plus the fixed table "encoder/pos_embed" [1, 1+N, D].
  msgpack      `flax.serialization.msgpack_serialize` of the encoder param tree.
  safetensors  a PyTorch state dict (names from `--names`, default "hf": loads with
               `transformers.ViTMAEModel(config).load_state_dict(...)` of transformers 5).
  torch        `torch.save` of the same state dict.

Hybrid encoders (model.name depthwise_mae, convstem_mae, convmae, channel_mae) have no
transformers/timm counterpart: every format writes their flax parameter names and layouts
(`--names flax`, their default; safetensors/torch keys "encoder/stage1_embed/proj/kernel",
arrays as flax stores them), the sidecar records the model name and variant, and
`load_encoder` + the registry class rebuild the encoder. The hybrids' fixed sin-cos
tables are not written (the model code recomputes them).

Name schemes for PyTorch state dicts:
  hf         transformers >= 5 (`layers.{i}.attention.q_proj`, `mlp.fc1`, ...), the
             installed and pinned version; ViTMAEModel / ViTModel / ViTMAEForPreTraining.
  hf_legacy  transformers 4.x and older hub checkpoints (`encoder.layer.{i}.attention.
             attention.query`, `intermediate.dense`, ...).
  timm       timm `VisionTransformer` (fused `blocks.{i}.attn.qkv`); for the full model the
             decoder names of facebookresearch/mae (`decoder_blocks.{i}`, `decoder_pred`).

Python API: `to_torch_state_dict`, `from_torch_state_dict`, `vitmae_config`, `vit_config`,
`hf_config_kwargs`, `model_spec`, `export_encoder`, `load_encoder`, `restore_params`,
`normalize_images`, `name_map`.

Layout facts the converters rely on (see mae_jax/models/vit.py): flax Dense kernels are
[in, out] (torch Linear weights are [out, in]); the patch-embedding conv kernel is
[p, p, C, D] (torch Conv2d: [D, C, p, p]); the fused qkv kernel [D, 3D] is ordered
q | k | v with heads contiguous inside each; LayerNorm `scale` is torch's `weight`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import re
import sys
from typing import Any, Iterable, Mapping

import numpy as np

import mae_jax
from mae_jax.models import vit

log = logging.getLogger(__name__)

FORMATS = ("npz", "safetensors", "msgpack", "torch")
SCHEMES = ("hf", "hf_legacy", "timm")  # PyTorch names (ViT MAE only)
FLAX_SCHEME = "flax"  # flax names and layouts, any MAE-family model
META_FILE = "mae_jax_meta.json"  # = mae_jax.data.pipeline.META_FILE (not imported: TF)

# How pixel values were normalised before entering the model (mae_jax.data.pipeline).
NORMALIZATION_FORMULAS = {
    "none": "x",
    "div255": "x / 255",
    "log1p": "sign(x) * log1p(|x|)",
    "zscore": "(x - mean[c]) / max(std[c], 1e-6)",
    "log1p_zscore": "(sign(x) * log1p(|x|) - log1p_mean[c]) / max(log1p_std[c], 1e-6)",
}

_HF_BLOCK = {
    "hf": dict(ln1="layernorm_before", ln2="layernorm_after", q="attention.q_proj",
               k="attention.k_proj", v="attention.v_proj", o="attention.o_proj",
               fc1="mlp.fc1", fc2="mlp.fc2"),
    "hf_legacy": dict(ln1="layernorm_before", ln2="layernorm_after",
                      q="attention.attention.query", k="attention.attention.key",
                      v="attention.attention.value", o="attention.output.dense",
                      fc1="intermediate.dense", fc2="output.dense"),
}


# ----------------------------------------------------------------------------- trees


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
  """Nested dict -> {"a/b/c": array} (big_vision naming)."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten(v, name))
    else:
      out[name] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> dict:
  out: dict = {}
  for name, v in flat.items():
    node = out
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def _np(x) -> np.ndarray:
  """numpy view of a jax / numpy / torch array (torch: detached, on CPU)."""
  if hasattr(x, "detach"):
    x = x.detach().cpu().numpy()
  return np.asarray(x)


def _count_blocks(tree: Mapping) -> int:
  n = sum(1 for k in tree if re.fullmatch(r"block_\d+", k))
  if sorted(k for k in tree if k.startswith("block_")) != [f"block_{i:02d}" for i in range(n)]:
    raise ValueError(f"unexpected block names {sorted(k for k in tree if k.startswith('block_'))}")
  return n


# ----------------------------------------------------------------------------- model spec


def model_spec(model, image_shape) -> dict:
  """Everything needed to rebuild the encoder (and decoder) without config files."""
  h, w, c = (int(s) for s in image_shape)
  grid = (h // model.patch, w // model.patch)
  name = model_name(model)
  if name != "mae":  # hybrids: rebuilt from the registry class, not from sizes
    return {
        "model": name, "variant": model.variant, "patch": int(model.patch),
        "image_shape": [h, w, c], "channels": c, "grid": list(grid),
        "num_patches": grid[0] * grid[1], "mask_ratio": float(model.mask_ratio),
        "norm_pix_loss": bool(model.norm_pix_loss),
        "rebuild": f"mae_jax.models.registry.MAE_FAMILY[{name!r}](variant={model.variant!r}, "
                   f"patch={int(model.patch)}, channels={c}); its params['encoder'] = the file",
        "layouts": "flax: Dense kernels [in, out], conv kernels [kh, kw, in/groups, out], "
                   "LayerNorm scale/bias",
    }
  size, _ = vit.parse_variant(model.variant)
  return {
      "model": "mae",
      "variant": model.variant, "patch": int(model.patch), "image_shape": [h, w, c],
      "channels": c, "grid": list(grid), "num_patches": grid[0] * grid[1],
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


def model_name(model) -> str:
  """The registry name (config model.name) of an MAE-family model instance."""
  from mae_jax.models import registry
  for name, cls in registry.MAE_FAMILY.items():
    if type(model) is cls:
      return name
  raise ValueError(f"{type(model).__name__} is not an MAE-family model "
                   f"({sorted(registry.MAE_FAMILY)})")


def hf_config_kwargs(spec: Mapping, mask_ratio: float | None = None) -> dict:
  """Keyword arguments of `transformers.ViTMAEConfig` for a `model_spec` (plain dict)."""
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
    raise ValueError(f"a {spec['model']!r} model has no transformers/timm counterpart; "
                     "export it with names 'flax' (docs/export.md, Hybrid encoders)")
  return spec


def vitmae_config(model_or_spec, image_shape=None, mask_ratio: float | None = None):
  """The matching `transformers.ViTMAEConfig` (ViTMAEModel / ViTMAEForPreTraining).

  transformers' ViTMAE builds its sin-cos tables for square grids only: non-square
  images raise here (use `vit_config` / ViTModel, whose position table is a parameter).
  """
  import transformers
  spec = _as_spec(model_or_spec, image_shape)
  h, w, _ = spec["image_shape"]
  if h != w:
    raise ValueError(f"transformers' ViTMAE supports square images only, got {h}x{w}; "
                     "use vit_config() with transformers.ViTModel for the encoder")
  return transformers.ViTMAEConfig(**hf_config_kwargs(spec, mask_ratio))


def vit_config(model_or_spec, image_shape=None):
  """The matching `transformers.ViTConfig` for the encoder as a `ViTModel`."""
  import transformers
  spec = _as_spec(model_or_spec, image_shape)
  kw = hf_config_kwargs(spec)
  keep = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
          "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps",
          "image_size", "patch_size", "num_channels", "qkv_bias")
  return transformers.ViTConfig(**{k: kw[k] for k in keep})


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


# ----------------------------------------------------------------------------- name rules


@dataclasses.dataclass(frozen=True)
class _Rule:
  jax: str | None          # "/"-joined path in MAE params; None for a fixed position table
  torch: tuple[str, ...]   # one name, or three (q, k, v) for a split fused qkv
  op: str                  # copy | linear | conv | split_linear | split | pos_enc | pos_dec


def _block_rules(j: str, t: str, scheme: str) -> list[_Rule]:
  if scheme == "timm":
    pairs = [("norm1/scale", "norm1.weight", "copy"), ("norm1/bias", "norm1.bias", "copy"),
             ("attn/qkv/kernel", "attn.qkv.weight", "linear"),
             ("attn/qkv/bias", "attn.qkv.bias", "copy"),
             ("attn/proj/kernel", "attn.proj.weight", "linear"),
             ("attn/proj/bias", "attn.proj.bias", "copy"),
             ("norm2/scale", "norm2.weight", "copy"), ("norm2/bias", "norm2.bias", "copy"),
             ("mlp/fc1/kernel", "mlp.fc1.weight", "linear"), ("mlp/fc1/bias", "mlp.fc1.bias", "copy"),
             ("mlp/fc2/kernel", "mlp.fc2.weight", "linear"), ("mlp/fc2/bias", "mlp.fc2.bias", "copy")]
    return [_Rule(f"{j}/{a}", (t + b,), op) for a, b, op in pairs]
  n = _HF_BLOCK[scheme]
  return [
      _Rule(f"{j}/norm1/scale", (f"{t}{n['ln1']}.weight",), "copy"),
      _Rule(f"{j}/norm1/bias", (f"{t}{n['ln1']}.bias",), "copy"),
      _Rule(f"{j}/attn/qkv/kernel", tuple(f"{t}{n[x]}.weight" for x in "qkv"), "split_linear"),
      _Rule(f"{j}/attn/qkv/bias", tuple(f"{t}{n[x]}.bias" for x in "qkv"), "split"),
      _Rule(f"{j}/attn/proj/kernel", (f"{t}{n['o']}.weight",), "linear"),
      _Rule(f"{j}/attn/proj/bias", (f"{t}{n['o']}.bias",), "copy"),
      _Rule(f"{j}/norm2/scale", (f"{t}{n['ln2']}.weight",), "copy"),
      _Rule(f"{j}/norm2/bias", (f"{t}{n['ln2']}.bias",), "copy"),
      _Rule(f"{j}/mlp/fc1/kernel", (f"{t}{n['fc1']}.weight",), "linear"),
      _Rule(f"{j}/mlp/fc1/bias", (f"{t}{n['fc1']}.bias",), "copy"),
      _Rule(f"{j}/mlp/fc2/kernel", (f"{t}{n['fc2']}.weight",), "linear"),
      _Rule(f"{j}/mlp/fc2/bias", (f"{t}{n['fc2']}.bias",), "copy"),
  ]


def _rules(scheme: str, depth: int, dec_depth: int | None, prefix: str = "") -> list[_Rule]:
  """Rules for the encoder (torch names prefixed with `prefix`) and optionally the decoder."""
  if scheme not in SCHEMES:
    raise ValueError(f"unknown name scheme {scheme!r}; choose one of {SCHEMES}")
  p = prefix
  r: list[_Rule] = []
  if scheme == "timm":
    r += [_Rule("encoder/cls_token", (p + "cls_token",), "copy"),
          _Rule(None, (p + "pos_embed",), "pos_enc"),
          _Rule("encoder/patch_embed/proj/kernel", (p + "patch_embed.proj.weight",), "conv"),
          _Rule("encoder/patch_embed/proj/bias", (p + "patch_embed.proj.bias",), "copy")]
    for i in range(depth):
      r += _block_rules(f"encoder/block_{i:02d}", f"{p}blocks.{i}.", scheme)
    r += [_Rule("encoder/norm/scale", (p + "norm.weight",), "copy"),
          _Rule("encoder/norm/bias", (p + "norm.bias",), "copy")]
  else:
    layer = "layers" if scheme == "hf" else "encoder.layer"
    r += [_Rule("encoder/cls_token", (p + "embeddings.cls_token",), "copy"),
          _Rule(None, (p + "embeddings.position_embeddings",), "pos_enc"),
          _Rule("encoder/patch_embed/proj/kernel",
                (p + "embeddings.patch_embeddings.projection.weight",), "conv"),
          _Rule("encoder/patch_embed/proj/bias",
                (p + "embeddings.patch_embeddings.projection.bias",), "copy")]
    for i in range(depth):
      r += _block_rules(f"encoder/block_{i:02d}", f"{p}{layer}.{i}.", scheme)
    r += [_Rule("encoder/norm/scale", (p + "layernorm.weight",), "copy"),
          _Rule("encoder/norm/bias", (p + "layernorm.bias",), "copy")]
  if dec_depth is None:
    return r
  d = "" if scheme == "timm" else "decoder."
  blocks = "decoder_blocks" if scheme == "timm" else "decoder.decoder_layers"
  r += [_Rule("decoder/embed/kernel", (d + "decoder_embed.weight",), "linear"),
        _Rule("decoder/embed/bias", (d + "decoder_embed.bias",), "copy"),
        _Rule("decoder/mask_token", (d + "mask_token",), "copy"),
        _Rule(None, (d + "decoder_pos_embed",), "pos_dec")]
  for i in range(dec_depth):
    r += _block_rules(f"decoder/block_{i:02d}", f"{blocks}.{i}.", scheme)
  r += [_Rule("decoder/norm/scale", (d + "decoder_norm.weight",), "copy"),
        _Rule("decoder/norm/bias", (d + "decoder_norm.bias",), "copy"),
        _Rule("decoder/pred/kernel", (d + "decoder_pred.weight",), "linear"),
        _Rule("decoder/pred/bias", (d + "decoder_pred.bias",), "copy")]
  return r


def _to_torch(op: str, x: np.ndarray) -> list[np.ndarray]:
  if op == "copy":
    return [x]
  if op == "linear":
    return [x.T]
  if op == "conv":
    return [x.transpose(3, 2, 0, 1)]
  if op == "split_linear":
    d = x.shape[1] // 3
    return [x[:, i * d:(i + 1) * d].T for i in range(3)]
  if op == "split":
    d = x.shape[0] // 3
    return [x[i * d:(i + 1) * d] for i in range(3)]
  raise ValueError(op)


def _from_torch(op: str, xs: list[np.ndarray]) -> np.ndarray:
  if op == "copy":
    return xs[0]
  if op == "linear":
    return xs[0].T
  if op == "conv":
    return xs[0].transpose(2, 3, 1, 0)
  if op == "split_linear":
    return np.concatenate([x.T for x in xs], axis=1)
  if op == "split":
    return np.concatenate(xs, axis=0)
  raise ValueError(op)


def _op_doc(op: str, i: int = 0, d: int | None = None) -> str:
  if op == "split_linear":
    return f"[:, {i}*D:{i + 1}*D].T  (q|k|v split of the fused kernel [D, 3D])"
  if op == "split":
    return f"[{i}*D:{i + 1}*D]  (q|k|v split of the fused bias [3D])"
  return {"copy": "", "linear": ".T", "conv": ".transpose(3, 2, 0, 1)  ([p,p,C,D] -> [D,C,p,p])",
          "pos_enc": "", "pos_dec": ""}[op]


def _pos_table(width: int, grid) -> np.ndarray:
  return vit.sincos_2d(int(width), (int(grid[0]), int(grid[1])))[None]


def _split_params(params: Mapping) -> tuple[Mapping, Mapping | None]:
  """(encoder tree, decoder tree or None) from full MAE params or an encoder tree."""
  if "encoder" in params:
    return params["encoder"], params.get("decoder")
  if "cls_token" in params and "patch_embed" in params or "stage1_embed" in params:
    return params, None
  raise ValueError("expected MAE params ({'encoder', 'decoder'}) or an encoder tree "
                   "(cls_token, patch_embed, block_NN, norm; ConvMAE: stage1_embed, ...); got "
                   f"keys {sorted(params)}")


# ----------------------------------------------------------------------------- converters


def name_map(depth: int, dec_depth: int | None = None, scheme: str = "hf",
             prefix: str | None = None) -> dict[str, str]:
  """{torch name: "mae_jax flax path + transform"} for documentation and sidecars."""
  prefix = _default_prefix(scheme, dec_depth) if prefix is None else prefix
  out = {}
  for rule in _rules(scheme, depth, dec_depth, prefix):
    for i, t in enumerate(rule.torch):
      if rule.op == "pos_enc":
        out[t] = "fixed: mae_jax.models.vit.sincos_2d(width, grid)[None] (not a parameter)"
      elif rule.op == "pos_dec":
        out[t] = "fixed: mae_jax.models.vit.sincos_2d(dec_width, grid)[None] (not a parameter)"
      else:
        out[t] = rule.jax + _op_doc(rule.op, i)
  return out


def _default_prefix(scheme: str, dec_depth) -> str:
  # ViTMAEForPreTraining nests its encoder under "vit."; timm / facebookresearch/mae do not.
  return "vit." if (dec_depth is not None and scheme != "timm") else ""


def to_torch_state_dict(params: Mapping, grid_hw, *, scheme: str = "hf", full: bool = False,
                        prefix: str | None = None) -> dict[str, np.ndarray]:
  """mae_jax params -> PyTorch state dict (numpy float32 values, C-contiguous).

  Args:
    params: full MAE params {"encoder", "decoder"} or an encoder tree.
    grid_hw: patch grid (H/p, W/p), for the fixed position tables.
    scheme: "hf" (transformers >= 5), "hf_legacy" (transformers 4.x) or "timm".
    full: include the decoder (`ViTMAEForPreTraining`; timm: facebookresearch/mae names).
    prefix: prefix of the encoder names; default "vit." for the full HF model, else "".
  Wrap for torch with `{k: torch.from_numpy(v) for k, v in sd.items()}`.
  """
  enc, dec = _split_params(params)
  if full and dec is None:
    raise ValueError("full=True needs the decoder params")
  tree = {"encoder": enc, "decoder": dec} if full else {"encoder": enc}
  flat = {k: _np(v) for k, v in flatten(tree).items()}
  dec_depth = _count_blocks(dec) if full else None
  prefix = _default_prefix(scheme, dec_depth) if prefix is None else prefix
  sd: dict[str, np.ndarray] = {}
  used = set()
  for rule in _rules(scheme, _count_blocks(enc), dec_depth, prefix):
    if rule.op == "pos_enc":
      outs = [_pos_table(flat["encoder/cls_token"].shape[-1], grid_hw)]
    elif rule.op == "pos_dec":
      outs = [_pos_table(flat["decoder/mask_token"].shape[-1], grid_hw)]
    else:
      outs = _to_torch(rule.op, flat[rule.jax])
      used.add(rule.jax)
    for name, x in zip(rule.torch, outs):
      sd[name] = np.ascontiguousarray(x, dtype=np.float32)
  left = sorted(set(flat) - used)
  if left:
    raise ValueError(f"parameters with no PyTorch name: {left}")
  return sd


def detect_scheme(names: Iterable[str]) -> str:
  names = list(names)
  if any(re.search(r"(^|\.)layers\.\d+\.attention\.q_proj\.", n) for n in names):
    return "hf"
  if any(re.search(r"(^|\.)encoder\.layer\.\d+\.attention\.attention\.query\.", n) for n in names):
    return "hf_legacy"
  if any(re.search(r"(^|\.)blocks\.\d+\.attn\.qkv\.", n) for n in names):
    return "timm"
  raise ValueError("cannot tell the naming scheme of this state dict (expected transformers "
                   "ViT/ViTMAE or timm VisionTransformer names); first names: "
                   f"{names[:8]}")


# Keys of other heads that an encoder import ignores (with a log line).
_IGNORED = re.compile(r"^(pooler\.|head\.|fc_norm\.|classifier\.|embeddings\.mask_token$)")


def from_torch_state_dict(sd: Mapping[str, Any], *, scheme: str = "auto",
                          grid_hw=None, encoder_only: bool = False, strict: bool = True,
                          check_pos_embed: bool = True) -> dict:
  """PyTorch ViTMAE / ViTMAEModel / ViTModel / timm state dict -> mae_jax params.

  Returns {"encoder": tree} plus "decoder": tree when the state dict holds a ViTMAE
  decoder (and not `encoder_only`): the shapes of `MAE` params["encoder"] /
  params["decoder"], numpy float32, ready for `model.apply({"params": ...})` or to
  initialise probing / finetuning. Accepts torch tensors or numpy arrays; strips the
  "vit." (ViTMAEForPreTraining), "module." (DDP) and "_orig_mod." (torch.compile) prefixes.

  The position tables are fixed sin-cos in mae_jax: with `check_pos_embed` they must
  equal the table mae_jax computes (a learned or interpolated table cannot be carried
  over, and is an error). `grid_hw` defaults to the square grid that fits the table.
  With `strict`, keys that are neither mapped nor a known other head (pooler, classifier
  head) are an error.
  """
  flat = {}
  for k, v in sd.items():
    k = re.sub(r"^(module\.|_orig_mod\.)+", "", k)
    flat[k] = _np(v)
  if any(k.startswith("vit.") for k in flat):
    flat = {k[4:] if k.startswith("vit.") else k: v for k, v in flat.items()}
  scheme = detect_scheme(flat) if scheme == "auto" else scheme
  if scheme == "timm":
    layer_re = r"blocks\.(\d+)\."
  else:
    layer_re = r"layers\.(\d+)\." if scheme == "hf" else r"encoder\.layer\.(\d+)\."
  depth = 1 + max(int(m.group(1)) for k in flat if (m := re.match(layer_re, k)))
  dec_re = r"decoder_blocks\.(\d+)\." if scheme == "timm" else r"decoder\.decoder_layers\.(\d+)\."
  dec_ids = [int(m.group(1)) for k in flat if (m := re.match(dec_re, k))]
  dec_depth = (1 + max(dec_ids)) if dec_ids and not encoder_only else None
  out: dict[str, np.ndarray] = {}
  used = set()
  for rule in _rules(scheme, depth, dec_depth, ""):
    missing = [t for t in rule.torch if t not in flat]
    if missing:
      raise KeyError(f"state dict ({scheme} names) lacks {missing}")
    used.update(rule.torch)
    xs = [flat[t] for t in rule.torch]
    if rule.op in ("pos_enc", "pos_dec"):
      if check_pos_embed:
        _check_pos(rule.torch[0], xs[0], grid_hw)
      continue
    out[rule.jax] = np.ascontiguousarray(_from_torch(rule.op, xs), dtype=np.float32)
  rest = sorted(set(flat) - used)
  ignored = [k for k in rest if _IGNORED.match(k) or (encoder_only and "decoder" in k)
             or k == "mask_token"]
  unknown = sorted(set(rest) - set(ignored))
  if ignored:
    log.info("from_torch_state_dict: ignored %s", ignored)
  if unknown and strict:
    raise ValueError(f"state dict keys with no mae_jax parameter: {unknown} "
                     "(pass strict=False to ignore them)")
  return unflatten(out)


def _check_pos(name: str, table: np.ndarray, grid_hw) -> None:
  n = table.shape[-2] - 1
  if grid_hw is None:
    s = int(round(n ** 0.5))
    if s * s != n:
      raise ValueError(f"{name}: {n} patches is not a square grid; pass grid_hw")
    grid_hw = (s, s)
  want = _pos_table(table.shape[-1], grid_hw)
  if table.reshape(want.shape).shape != want.shape or not np.allclose(
      table.reshape(want.shape), want, rtol=0, atol=1e-5):
    err = float(np.max(np.abs(table.reshape(want.shape) - want)))
    raise ValueError(
        f"{name} differs from mae_jax's fixed sin-cos table (max |diff| {err:.3g}); mae_jax "
        "has no learned position embedding, so these weights cannot be carried over as they "
        "are (pass check_pos_embed=False to drop the table anyway)")


# ----------------------------------------------------------------------------- run restore


def load_run(workdir: str, image_shape=None) -> dict:
  """Config, model, image shape and dataset metadata of a pretraining run's workdir.

  Any MAE-family `model.name` (registry.MAE_FAMILY); the model is rebuilt from the saved
  config's `model` block alone (float32).
  """
  from mae_jax.models import mae as mae_lib
  from mae_jax.models import registry
  with open(os.path.join(workdir, "config.json")) as f:
    cfg = json.load(f)
  data_dir = (cfg.get("data") or {}).get("dir") or ""
  meta = None
  for cand in (data_dir, os.path.join(workdir, data_dir)):
    if data_dir and os.path.exists(os.path.join(cand, META_FILE)):
      with open(os.path.join(cand, META_FILE)) as f:
        meta = json.load(f)
      break
  if image_shape is None:
    if meta is None:
      raise FileNotFoundError(
          f"dataset metadata {os.path.join(data_dir or '<config data.dir empty>', META_FILE)} "
          "not found; pass --image-shape H,W,C (the sidecar will then say the channel "
          "statistics are missing)")
    image_shape = tuple(meta["image_shape"])
  image_shape = tuple(int(s) for s in image_shape)
  if meta is not None and tuple(meta["image_shape"]) != image_shape:
    raise ValueError(f"--image-shape {image_shape} differs from the dataset's "
                     f"{tuple(meta['image_shape'])}")
  m = cfg["model"]
  name = m.get("name", "mae")
  if name not in registry.MAE_FAMILY:
    raise ValueError(f"{workdir} holds a {name!r} model; export takes the pretraining runs of "
                     f"masked autoencoders ({sorted(registry.MAE_FAMILY)}); for a finetuned "
                     "classifier export the pretraining run it started from")
  mae_lib.check_image_shape(image_shape, m["patch"])
  model = registry.MAE_FAMILY[name](variant=m["variant"], patch=m["patch"],
                                    channels=image_shape[-1], mask_ratio=m["mask_ratio"],
                                    norm_pix_loss=m["norm_pix_loss"])
  return {"config": cfg, "model": model, "image_shape": image_shape, "meta": meta,
          "data_dir": data_dir}


def restore_params(workdir: str, model, image_shape, step: int | None = None):
  """Restores only the `params` subtree (numpy, on host) of a checkpoint: (params, step).

  The abstract tree comes from the model, so the optimizer state is never read and a
  checkpoint of another model fails on its shapes (checkpoint.read_arrays).
  """
  import jax
  import jax.numpy as jnp
  from mae_jax import checkpoint
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  abstract = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "masking": jax.random.key(0)}, dummy, train=False)["params"])
  item = {"params": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)}
  out, step = checkpoint.read_arrays(workdir, step, item)
  return jax.tree.map(np.asarray, out["params"]), step


# ----------------------------------------------------------------------------- export


def input_spec(meta: Mapping | None, normalization: str) -> dict:
  stats = (meta or {}).get("channel_stats")
  spec = {
      "layout": "NHWC [B, H, W, C] for mae_jax; PyTorch / transformers take NCHW: "
                "x.transpose(0, 3, 1, 2)",
      "dtype": "float32",
      "normalization": normalization,
      "formula": NORMALIZATION_FORMULAS.get(normalization, "?"),
      "channel_names": (meta or {}).get("channel_names"),
      "channel_stats": stats,
      "channel_stats_split": (meta or {}).get("channel_stats_split"),
      "stats_missing": stats is None,
  }
  if stats is None:
    spec["note"] = ("dataset metadata was not available at export time: channel statistics "
                    "are missing" + (" and the zscore normalisation cannot be reproduced"
                                     if "zscore" in normalization else ""))
  return spec


def normalize_images(x: np.ndarray, spec: Mapping) -> np.ndarray:
  """Applies the sidecar's input normalisation (numpy, per channel, channels last)."""
  x = np.asarray(x, np.float32)
  mode = spec["normalization"]
  stats = spec.get("channel_stats") or {}
  if mode == "none":
    return x
  if mode == "div255":
    return x / 255.0
  slog = np.sign(x) * np.log1p(np.abs(x))
  if mode == "log1p":
    return slog
  if mode == "zscore":
    return (x - np.float32(stats["mean"])) / np.maximum(np.float32(stats["std"]), 1e-6)
  if mode == "log1p_zscore":
    return ((slog - np.float32(stats["log1p_mean"]))
            / np.maximum(np.float32(stats["log1p_std"]), 1e-6))
  raise ValueError(f"unknown normalization {mode!r}")


def export_encoder(params: Mapping, spec: Mapping, fmt: str, output: str, *,
                   scheme: str = "hf", step: int | None = None, input: Mapping | None = None,
                   extra: Mapping | None = None) -> dict:
  """Writes the encoder of `params` to `output` in `fmt` and the sidecar `output + '.json'`.

  `scheme`: PyTorch names for safetensors/torch (hf, hf_legacy, timm: ViT MAE only) or
  "flax" (flax names and layouts; the only choice for hybrid models).
  """
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
  vit_mae = spec.get("model", "mae") == "mae"
  if scheme not in SCHEMES + (FLAX_SCHEME,):
    raise ValueError(f"unknown name scheme {scheme!r}; choose one of {SCHEMES + (FLAX_SCHEME,)}")
  if not vit_mae and scheme != FLAX_SCHEME:
    raise ValueError(f"a {spec['model']!r} encoder has no {scheme!r} (PyTorch ViT) names; "
                     f"export it with names {FLAX_SCHEME!r}")
  enc, _ = _split_params(params)
  enc = {k: v for k, v in flatten(enc).items()}
  enc = unflatten({k: np.asarray(_np(v), np.float32) for k, v in enc.items()})
  grid = spec["grid"]
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  if fmt in ("safetensors", "torch") and scheme == FLAX_SCHEME:
    sd = flatten({"encoder": enc})
    if fmt == "safetensors":
      from safetensors.numpy import save_file
      save_file(sd, output, metadata={"format": "flax", "producer": "mae_jax.export",
                                      "name_scheme": FLAX_SCHEME})
    else:
      import torch
      torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, output)
    names = {k: f"params/{k}" for k in sd}
  elif fmt == "npz":
    flat = flatten({"encoder": enc})
    if vit_mae:
      flat["encoder/pos_embed"] = _pos_table(spec["width"], grid)
    with open(output, "wb") as f:  # np.savez would append ".npz" to other names
      np.savez(f, **flat)
    names = {k: ("fixed sin-cos table mae_jax.models.vit.sincos_2d(width, grid)[None], "
                 "not a parameter" if k == "encoder/pos_embed" else f"params/{k}")
             for k in flat}
  elif fmt == "msgpack":
    from flax import serialization
    with open(output, "wb") as f:
      f.write(serialization.msgpack_serialize(enc))
    names = {k: f"params/encoder/{k}" for k in flatten(enc)}
  else:
    sd = to_torch_state_dict(enc, grid, scheme=scheme)
    if fmt == "safetensors":
      from safetensors.numpy import save_file
      save_file(sd, output, metadata={"format": "pt", "producer": "mae_jax.export",
                                      "name_scheme": scheme})
    else:
      import torch
      torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, output)
    names = {k: f"params/{v}" if not v.startswith("fixed") else v
             for k, v in name_map(spec["depth"], None, scheme).items()}
  n = spec["num_patches"]
  sidecar = {
      "format": fmt,
      "file": os.path.basename(output),
      "mae_jax_version": mae_jax.__version__,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "checkpoint_step": step,
      "model": dict(spec),
      "input": dict(input) if input is not None else input_spec(None, "none"),
      "name_scheme": scheme if fmt in ("safetensors", "torch") else FLAX_SCHEME,
      "param_names": names,
  }
  if not vit_mae:
    sidecar.update({
        "contents": f"encoder only of a {spec['model']!r} masked autoencoder (flax names)",
        "features": {"tokens": f"{spec['model']}.encode(images)['tokens'] (mae_jax)",
                     "cls": "encode(images)['cls']", "mean": "encode(images)['mean']"}})
    return _write_sidecar(output, {**sidecar, **(extra or {})})
  sidecar.update({
      "contents": "encoder only: patch embedding, CLS token, position table, blocks, final norm",
      "features": {
          "tokens": "encoder output after the final LayerNorm, [B, 1 + N, D], CLS first "
                    "(mae_jax: MAE.encode(images)['tokens'])",
          "cls": "tokens[:, 0]", "mean": "tokens[:, 1:].mean(axis=1)",
      },
      "transformers": {
          "class": "ViTMAEModel (or ViTModel with vit_config; strict=False for its pooler)",
          "config": hf_config_kwargs(spec, mask_ratio=0.0),
          "usage": f"ViTMAEModel(ViTMAEConfig(**config)); call with mask_ratio 0.0 and "
                   f"noise=torch.arange({n}).expand(batch, {n}) so patch tokens stay in "
                   "order (without noise, ViTMAE shuffles them even at mask ratio 0)",
      },
      "timm": {"constructor": timm_constructor(spec),
               "features": "model.forward_features(x) == tokens"},
  })
  return _write_sidecar(output, {**sidecar, **(extra or {})})


def _write_sidecar(output: str, sidecar: dict) -> dict:
  with open(output + ".json", "w") as f:
    json.dump(sidecar, f, indent=1)
  return sidecar


def load_encoder(path: str, fmt: str | None = None) -> tuple[dict, dict | None]:
  """Reads any exported format back: (encoder param tree (numpy), sidecar or None).

  The tree has the shape of `MAE` params["encoder"]; put it into a model's params with
  `params = {**params, "encoder": tree}`.
  """
  sidecar = None
  if os.path.exists(path + ".json"):
    with open(path + ".json") as f:
      sidecar = json.load(f)
  fmt = fmt or (sidecar or {}).get("format") or os.path.splitext(path)[1].lstrip(".")
  fmt = {"pt": "torch", "pth": "torch", "bin": "torch"}.get(fmt, fmt)
  grid = tuple((sidecar or {}).get("model", {}).get("grid") or ()) or None
  if fmt == "npz":
    with np.load(path) as z:
      flat = {k: z[k] for k in z.files}
    pos = flat.pop("encoder/pos_embed", None)
    tree = unflatten(flat)["encoder"]
    if pos is not None:
      _check_pos("encoder/pos_embed", pos, grid)
    return tree, sidecar
  if fmt == "msgpack":
    from flax import serialization
    with open(path, "rb") as f:
      tree = serialization.msgpack_restore(f.read())
    return _numpy_tree(tree), sidecar
  if fmt == "safetensors":
    from safetensors.numpy import load_file
    sd = load_file(path)
  elif fmt == "torch":
    import torch
    sd = torch.load(path, map_location="cpu", weights_only=True)
  else:
    raise ValueError(f"cannot tell the format of {path}; pass fmt= one of {FORMATS}")
  scheme = (sidecar or {}).get("name_scheme", "auto")
  if not sd:
    raise ValueError(f"{path} holds no tensors")
  if scheme == FLAX_SCHEME or all(k.startswith("encoder/") for k in sd):
    return _numpy_tree(unflatten({k: np.asarray(v) for k, v in sd.items()})["encoder"]), sidecar
  tree = from_torch_state_dict(sd, scheme=scheme if scheme in SCHEMES else "auto",
                               grid_hw=grid, encoder_only=True)
  return tree["encoder"], sidecar


def _numpy_tree(tree: Mapping) -> dict:
  return {k: _numpy_tree(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in tree.items()}


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m mae_jax.export",
      description="Export the encoder of a mae_jax pretraining checkpoint (see docs/export.md).")
  p.add_argument("--workdir", required=True, help="training workdir (checkpoints/, config.json)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--format", required=True, choices=FORMATS)
  p.add_argument("--output", required=True, help="output file; the sidecar is OUTPUT.json")
  p.add_argument("--names", default=None, choices=SCHEMES + (FLAX_SCHEME,),
                 help="names for safetensors/torch: hf (transformers >= 5; the ViT MAE's "
                      "default), hf_legacy (transformers 4.x), timm, flax (flax names and "
                      "layouts; the only one, and the default, for hybrid models)")
  p.add_argument("--image-shape", default=None,
                 help="H,W,C when the dataset directory of the run is gone")
  return p


def main(argv=None) -> int:
  a = _parser().parse_args(argv)
  image_shape = None
  if a.image_shape:
    try:
      image_shape = tuple(int(s) for s in a.image_shape.split(","))
      assert len(image_shape) == 3
    except (ValueError, AssertionError):
      _parser().error(f"--image-shape must be H,W,C, got {a.image_shape!r}")
  if not os.path.exists(os.path.join(a.workdir, "config.json")):
    _parser().error(f"{a.workdir} has no config.json (not a mae_jax training workdir)")
  try:
    run = load_run(a.workdir, image_shape)
    params, step = restore_params(a.workdir, run["model"], run["image_shape"], a.step)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  spec = model_spec(run["model"], run["image_shape"])
  normalization = (run["config"].get("data") or {}).get("normalization", "none")
  inp = input_spec(run["meta"], normalization)
  if inp["stats_missing"]:
    print(f"warning: dataset metadata not found under data.dir={run['data_dir']!r}: the "
          "sidecar records that the channel statistics are missing", file=sys.stderr)
  scheme = a.names or ("hf" if spec["model"] == "mae" else FLAX_SCHEME)
  try:
    sidecar = export_encoder(params, spec, a.format, a.output, scheme=scheme, step=step,
                             input=inp, extra={"workdir": os.path.abspath(a.workdir)})
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  n = sum(int(np.prod(np.shape(v))) for v in flatten(params["encoder"]).values())
  print(json.dumps({"output": os.path.abspath(a.output), "sidecar": a.output + ".json",
                    "format": a.format, "step": step, "encoder_params": n,
                    "names": sidecar["name_scheme"]}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
