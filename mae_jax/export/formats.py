"""Encoder files (npz, safetensors, msgpack, torch) and their JSON sidecar.

Formats:
  npz          flat "/"-joined flax names ("encoder/block_00/attn/qkv/kernel", big_vision
               convention), float32, plus the fixed table "encoder/pos_embed" [1, 1+N, D].
  msgpack      `flax.serialization.msgpack_serialize` of the encoder param tree.
  safetensors  a PyTorch state dict (names from `scheme`, default "hf": loads with
               `transformers.ViTMAEModel(config).load_state_dict(...)` of transformers 5).
  torch        `torch.save` of the same state dict.
  hf           a directory `transformers.ViTMAEModel.from_pretrained` loads (`export.hf`).

safetensors, torch and hf need the torch extra; without it, one UsageError line naming
`pip install 'mae_jax[torch]'`.

Hybrid encoders have no PyTorch names: every format writes their flax names and
layouts (scheme "flax"), and their fixed sin-cos tables are not written (the model
code recomputes them).

The sidecar `PATH.json` records the model spec, the input normalisation with the
dataset's channel statistics, the checkpoint step, the format, the parameter name
map and the mae_jax version (docs/export.md, "Sidecar").
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Mapping

import numpy as np
from flax import traverse_util

import mae_jax
from mae_jax.errors import UsageError
from mae_jax.data import meta as meta_lib
from mae_jax.export import names as names_lib
from mae_jax.export import specs

FORMATS = ("npz", "safetensors", "msgpack", "torch", "hf")
_NEEDS = {"safetensors": ("safetensors",), "torch": ("torch",),
          "hf": ("torch", "transformers", "safetensors")}  # the torch extra
_PRODUCER = "mae_jax.export"
_POS_NOTE = ("fixed sin-cos table mae_jax.models.vit.sincos_2d(width, grid)[None], "
             "not a parameter")


def input_spec(meta: Mapping | None, normalization: str) -> dict:
  """The sidecar's `input` block: layout, normalisation and channel statistics.

  Args:
    meta: the dataset metadata (`mae_jax.data.meta.load_meta`), or None when the
      dataset is gone (the block then says the statistics are missing).
    normalization: the run's `data.normalization`.
  """
  stats = (meta or {}).get("channel_stats")
  spec = {
      "layout": "NHWC [B, H, W, C] for mae_jax; PyTorch / transformers take NCHW: "
                "x.transpose(0, 3, 1, 2)",
      "dtype": "float32",
      "normalization": normalization,
      "formula": meta_lib.FORMULAS.get(normalization, "?"),
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
  """Applies a sidecar's input normalisation (numpy, per channel, channels last).

  The same function as the training pipeline's (`mae_jax.data.meta.normalize`).

  Args:
    x: raw pixels [..., C].
    spec: the sidecar's `input` block (`input_spec`).

  Raises:
    ValueError: an unknown mode, or a mode whose channel statistics are missing.
  """
  return meta_lib.normalize(np.asarray(x, np.float32), spec["normalization"],
                            spec.get("channel_stats"))


def _check_scheme(spec: Mapping, fmt: str, scheme: str) -> None:
  if fmt not in FORMATS:
    raise UsageError(f"unknown format {fmt!r}; choose one of {FORMATS}")
  schemes = names_lib.SCHEMES + (names_lib.FLAX_SCHEME,)
  if scheme not in schemes:
    raise UsageError(f"unknown name scheme {scheme!r}; choose one of {schemes}")
  if fmt == "hf" and (spec.get("model", "mae") != "mae" or scheme != "hf"):
    raise UsageError("--format hf writes a transformers ViTMAEModel: ViT MAE encoders with "
                     f"names 'hf' only (got model {spec.get('model')!r}, names {scheme!r})")
  if spec.get("model", "mae") != "mae" and scheme != names_lib.FLAX_SCHEME:
    raise UsageError(f"a {spec['model']!r} encoder has no {scheme!r} (PyTorch ViT) names; "
                     f"export it with names {names_lib.FLAX_SCHEME!r}")


def _save_state_dict(sd: Mapping[str, np.ndarray], output: str, fmt: str, scheme: str) -> None:
  if fmt == "safetensors":
    from safetensors.numpy import save_file  # optional dependency
    file_format = "flax" if scheme == names_lib.FLAX_SCHEME else "pt"
    save_file(dict(sd), output, metadata={"format": file_format, "producer": _PRODUCER,
                                          "name_scheme": scheme})
  else:
    import torch  # optional dependency
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, output)


def _write_params(flat: dict[str, np.ndarray], spec: Mapping, fmt: str, output: str,
                  scheme: str) -> dict[str, str]:
  """Writes the flat encoder ("encoder/..." names) to `output`; returns the name map."""
  if fmt == "npz":
    if spec.get("model", "mae") == "mae":
      flat = {**flat, "encoder/pos_embed": names_lib.pos_table(spec["width"], spec["grid"])}
    with open(output, "wb") as f:  # np.savez would append ".npz" to other names
      np.savez(f, **flat)
    return {k: _POS_NOTE if k == "encoder/pos_embed" else f"params/{k}" for k in flat}
  if fmt == "msgpack":
    from flax import serialization
    with open(output, "wb") as f:
      f.write(serialization.msgpack_serialize(_unflatten(flat)["encoder"]))
    # msgpack holds the encoder tree itself, so its names have no "encoder/" prefix
    return {k.removeprefix("encoder/"): f"params/{k}" for k in flat}
  if scheme == names_lib.FLAX_SCHEME:
    _save_state_dict(flat, output, fmt, scheme)
    return {k: f"params/{k}" for k in flat}
  sd = names_lib.to_torch_state_dict(_unflatten(flat)["encoder"], spec["grid"], scheme=scheme)
  _save_state_dict(sd, output, fmt, scheme)
  return {k: v if v.startswith("fixed") else f"params/{v}"
          for k, v in names_lib.name_map(spec["depth"], None, scheme).items()}


def _usage(spec: Mapping) -> dict:
  """The sidecar's `contents`, `features` and (ViT MAE) `transformers` / `timm` blocks."""
  if spec.get("model", "mae") != "mae":
    return {
        "contents": f"encoder only of a {spec['model']!r} masked autoencoder (flax names)",
        "features": {"tokens": f"{spec['model']}.encode(images)['tokens'] (mae_jax)",
                     "cls": "encode(images)['cls']", "mean": "encode(images)['mean']"}}
  n = spec["num_patches"]
  sparse = spec.get("tokens") == "sparse"
  feats = {
      "token_mode": spec.get("tokens", "dense"),
      "tokens": "encoder output after the final LayerNorm, [B, 1 + N, D], CLS first "
                "(mae_jax: MAE.encode(images)['tokens'])",
      "cls": "tokens[:, 0]", "mean": "tokens[:, 1:].mean(axis=1)",
      "pytorch": f"mae_jax.export.torch_features(vitmae_model, images, patch={spec['patch']}, "
                 f"tokens={spec.get('tokens', 'dense')!r}) -> {{'cls', 'mean'}}",
  }
  if sparse:  # what the probe and finetune stages saw: occupied patches only
    feats.update(
        tokens="encoder output on the jet's occupied patches only (any non-zero pixel in any "
               "channel), [1 + k, D] per jet, CLS first (mae_jax: SparseMAE.encode)",
        mean="mean over the k occupied-patch tokens (the probe's 'mean' pooling); NOT the "
             f"mean over all {n} patches, which differs",
        cls="tokens[0] of the same sparse pass")
  return {
      "contents": "encoder only: patch embedding, CLS token, position table, blocks, final norm",
      "features": feats,
      "transformers": {
          "class": "ViTMAEModel (or ViTModel with vit_config; strict=False for its pooler)",
          "config": specs.hf_config_kwargs(spec, mask_ratio=0.0),
          "usage": f"ViTMAEModel(ViTMAEConfig(**config)); call with mask_ratio 0.0 and "
                   f"noise=torch.arange({n}).expand(batch, {n}) so patch tokens stay in "
                   "order (without noise, ViTMAE shuffles them even at mask ratio 0)",
      },
      "timm": {"constructor": specs.timm_constructor(spec),
               "features": "model.forward_features(x) == tokens"},
  }


def export_encoder(params: Mapping, spec: Mapping, fmt: str, output: str, *,
                   scheme: str = "hf", step: int | None = None, input: Mapping | None = None,
                   extra: Mapping | None = None, meta: Mapping | None = None) -> dict:
  """Writes the encoder of `params` to `output` and the sidecar `output + '.json'`.

  Args:
    params: full MAE params {"encoder", "decoder"} or an encoder tree.
    spec: `specs.model_spec` of the model.
    fmt: one of FORMATS.
    output: the file to write (any name; its folder is created).
    scheme: PyTorch names for safetensors/torch ("hf", "hf_legacy", "timm": ViT MAE
      only) or "flax" (flax names and layouts; the only choice for hybrid models).
    step: the checkpoint step, recorded in the sidecar.
    input: the sidecar's `input` block (`input_spec`); default: no normalisation.
    extra: more sidecar entries (they override the computed ones).
    meta: the dataset metadata, for the model card of `fmt="hf"` (a directory).

  Returns:
    The sidecar dict, as written.

  Raises:
    ValueError: an unknown format or scheme, or PyTorch names for a hybrid encoder.
  """
  _check_scheme(spec, fmt, scheme)
  from mae_jax.export import hf
  hf.require(fmt, _NEEDS.get(fmt, ()))  # one line naming the extra, before any work
  enc, _ = names_lib.split_params(params)
  flat = names_lib.flat_numpy({"encoder": enc}, np.float32)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  if fmt == "hf":
    sd = names_lib.to_torch_state_dict(enc, spec["grid"], scheme="hf")
    param_names = {k: v if v.startswith("fixed") else f"params/{v}"
                   for k, v in names_lib.name_map(spec["depth"], None, "hf").items()}
  else:
    param_names = _write_params(flat, spec, fmt, output, scheme)
  sidecar = {
      "format": fmt,
      "file": os.path.basename(output),
      "mae_jax_version": mae_jax.__version__,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "checkpoint_step": step,
      "model": dict(spec),
      "input": dict(input) if input is not None else input_spec(None, "none"),
      "name_scheme": scheme if fmt in ("safetensors", "torch") else names_lib.FLAX_SCHEME,
      "param_names": param_names,
      **_usage(spec),
      **(extra or {}),
  }
  if fmt == "hf":
    hf.export_hf(sd, sidecar, output, meta=meta, workdir=(extra or {}).get("workdir"))
    return sidecar
  with open(output + ".json", "w") as f:
    json.dump(sidecar, f, indent=1)
  return sidecar


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def load_encoder(path: str, fmt: str | None = None) -> tuple[dict, dict | None]:
  """Reads any exported format back.

  The tree has the shape of `MAE` params["encoder"]; put it into a model's params with
  `params = {**params, "encoder": tree}`.

  Args:
    path: the exported file; its sidecar `path + '.json'` is read when present.
    fmt: one of FORMATS; default the sidecar's, else the file name's extension
      (.pt, .pth and .bin mean torch).

  Returns:
    (encoder param tree of numpy arrays, sidecar dict or None).

  Raises:
    ValueError: an unknown format, an empty state dict, or an npz position table
      that is not mae_jax's sin-cos table.
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
    if pos is not None:
      names_lib.check_pos_table("encoder/pos_embed", pos, grid)
    return _unflatten(flat)["encoder"], sidecar
  if fmt == "msgpack":
    from flax import serialization
    with open(path, "rb") as f:
      tree = serialization.msgpack_restore(f.read())
    return _unflatten(names_lib.flat_numpy(tree)), sidecar
  if fmt == "safetensors":
    from safetensors.numpy import load_file  # optional dependency
    sd = load_file(path)
  elif fmt == "torch":
    import torch  # optional dependency
    sd = torch.load(path, map_location="cpu", weights_only=True)
  else:
    raise UsageError(f"cannot tell the format of {path}; pass fmt= one of {FORMATS}")
  if not sd:
    raise UsageError(f"{path} holds no tensors")
  scheme = (sidecar or {}).get("name_scheme", "auto")
  if scheme == names_lib.FLAX_SCHEME or all(k.startswith("encoder/") for k in sd):
    return _unflatten(names_lib.flat_numpy(sd))["encoder"], sidecar
  tree = names_lib.from_torch_state_dict(
      sd, scheme=scheme if scheme in names_lib.SCHEMES else "auto", grid_hw=grid,
      encoder_only=True)
  return tree["encoder"], sidecar
