"""flax <-> PyTorch parameter names and tensor layouts for the ViT MAE.

Name schemes for PyTorch state dicts:
  hf         transformers >= 5 (`layers.{i}.attention.q_proj`, `mlp.fc1`, ...), the
             installed and pinned version; ViTMAEModel / ViTModel / ViTMAEForPreTraining.
  hf_legacy  transformers 4.x and older hub checkpoints (`encoder.layer.{i}.attention.
             attention.query`, `intermediate.dense`, ...).
  timm       timm `VisionTransformer` (fused `blocks.{i}.attn.qkv`); for the full model the
             decoder names of facebookresearch/mae (`decoder_blocks.{i}`, `decoder_pred`).

Layout facts the converters rely on (see mae_jax/models/vit.py): flax Dense kernels are
[in, out] (torch Linear weights are [out, in]); the patch-embedding conv kernel is
[p, p, C, D] (torch Conv2d: [D, C, p, p]); the fused qkv kernel [D, 3D] is ordered
q | k | v with heads contiguous inside each; LayerNorm `scale` is torch's `weight`.

Every conversion is a list of `_Rule`s (one flax path <-> one or three torch names and
an `op` that says how the layout changes), so `name_map`, `to_torch_state_dict` and
`from_torch_state_dict` cannot disagree about a name.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Iterable, Mapping

import numpy as np
from flax import traverse_util

from mae_jax.models import vit

log = logging.getLogger(__name__)

SCHEMES = ("hf", "hf_legacy", "timm")  # PyTorch names (ViT MAE only)
FLAX_SCHEME = "flax"  # flax names and layouts, any MAE-family model

_HF_BLOCK = {
    "hf": dict(ln1="layernorm_before", ln2="layernorm_after", q="attention.q_proj",
               k="attention.k_proj", v="attention.v_proj", o="attention.o_proj",
               fc1="mlp.fc1", fc2="mlp.fc2"),
    "hf_legacy": dict(ln1="layernorm_before", ln2="layernorm_after",
                      q="attention.attention.query", k="attention.attention.key",
                      v="attention.attention.value", o="attention.output.dense",
                      fc1="intermediate.dense", fc2="output.dense"),
}

# timm block: (flax path, torch name, op); its qkv stays fused, so no split.
_TIMM_BLOCK = (
    ("norm1/scale", "norm1.weight", "copy"), ("norm1/bias", "norm1.bias", "copy"),
    ("attn/qkv/kernel", "attn.qkv.weight", "linear"), ("attn/qkv/bias", "attn.qkv.bias", "copy"),
    ("attn/proj/kernel", "attn.proj.weight", "linear"),
    ("attn/proj/bias", "attn.proj.bias", "copy"),
    ("norm2/scale", "norm2.weight", "copy"), ("norm2/bias", "norm2.bias", "copy"),
    ("mlp/fc1/kernel", "mlp.fc1.weight", "linear"), ("mlp/fc1/bias", "mlp.fc1.bias", "copy"),
    ("mlp/fc2/kernel", "mlp.fc2.weight", "linear"), ("mlp/fc2/bias", "mlp.fc2.bias", "copy"),
)

# Keys of other heads that an encoder import ignores (with a log line).
_IGNORED = re.compile(r"^(pooler\.|head\.|fc_norm\.|classifier\.|embeddings\.mask_token$)")


def to_numpy(x) -> np.ndarray:
  """numpy view of a jax / numpy / torch array (torch: detached, on CPU)."""
  if hasattr(x, "detach"):
    x = x.detach().cpu().numpy()
  return np.asarray(x)


def flat_numpy(tree: Mapping, dtype=None) -> dict[str, np.ndarray]:
  """{"a/b/c": numpy array} of a nested tree (big_vision naming)."""
  flat = traverse_util.flatten_dict(tree, sep="/")
  return {k: np.asarray(to_numpy(v), dtype) for k, v in flat.items()}


def pos_table(width: int, grid) -> np.ndarray:
  """mae_jax's fixed sin-cos position table [1, 1 + N, width] for a patch grid."""
  return vit.sincos_2d(int(width), (int(grid[0]), int(grid[1])))[None]


def split_params(params: Mapping) -> tuple[Mapping, Mapping | None]:
  """(encoder tree, decoder tree or None) from full MAE params or an encoder tree."""
  if "encoder" in params:
    return params["encoder"], params.get("decoder")
  if "cls_token" in params and "patch_embed" in params or "stage1_embed" in params:
    return params, None
  raise ValueError("expected MAE params ({'encoder', 'decoder'}) or an encoder tree "
                   "(cls_token, patch_embed, block_NN, norm; ConvMAE: stage1_embed, ...); got "
                   f"keys {sorted(params)}")


def _count_blocks(tree: Mapping) -> int:
  blocks = sorted(k for k in tree if k.startswith("block_"))
  n = sum(1 for k in tree if re.fullmatch(r"block_\d+", k))
  if blocks != [f"block_{i:02d}" for i in range(n)]:
    raise ValueError(f"unexpected block names {blocks}")
  return n


# ----------------------------------------------------------------------------- rules


@dataclasses.dataclass(frozen=True)
class _Rule:
  jax: str | None          # "/"-joined path in MAE params; None for a fixed position table
  torch: tuple[str, ...]   # one name, or three (q, k, v) for a split fused qkv
  op: str                  # copy | linear | conv | split_linear | split | pos_enc | pos_dec


def _block_rules(j: str, t: str, scheme: str) -> list[_Rule]:
  """Rules of one transformer block: flax path prefix `j`, torch name prefix `t`."""
  if scheme == "timm":
    return [_Rule(f"{j}/{a}", (t + b,), op) for a, b, op in _TIMM_BLOCK]
  n = _HF_BLOCK[scheme]
  rules = []
  for flax_name, key in (("norm1", "ln1"), ("attn/qkv", "qkv"), ("attn/proj", "o"),
                         ("norm2", "ln2"), ("mlp/fc1", "fc1"), ("mlp/fc2", "fc2")):
    if key == "qkv":  # one fused flax kernel, three torch Linears
      rules += [_Rule(f"{j}/attn/qkv/kernel", tuple(f"{t}{n[x]}.weight" for x in "qkv"),
                      "split_linear"),
                _Rule(f"{j}/attn/qkv/bias", tuple(f"{t}{n[x]}.bias" for x in "qkv"), "split")]
      continue
    norm = flax_name.startswith("norm")
    rules += [_Rule(f"{j}/{flax_name}/{'scale' if norm else 'kernel'}",
                    (f"{t}{n[key]}.weight",), "copy" if norm else "linear"),
              _Rule(f"{j}/{flax_name}/bias", (f"{t}{n[key]}.bias",), "copy")]
  return rules


def _rules(scheme: str, depth: int, dec_depth: int | None, prefix: str = "") -> list[_Rule]:
  """Rules for the encoder (torch names prefixed with `prefix`) and optionally the decoder."""
  if scheme not in SCHEMES:
    raise ValueError(f"unknown name scheme {scheme!r}; choose one of {SCHEMES}")
  p = prefix
  if scheme == "timm":
    emb = dict(cls="cls_token", pos="pos_embed", proj="patch_embed.proj", norm="norm")
    layer = "blocks"
  else:
    emb = dict(cls="embeddings.cls_token", pos="embeddings.position_embeddings",
               proj="embeddings.patch_embeddings.projection", norm="layernorm")
    layer = "layers" if scheme == "hf" else "encoder.layer"
  r = [_Rule("encoder/cls_token", (p + emb["cls"],), "copy"),
       _Rule(None, (p + emb["pos"],), "pos_enc"),
       _Rule("encoder/patch_embed/proj/kernel", (f"{p}{emb['proj']}.weight",), "conv"),
       _Rule("encoder/patch_embed/proj/bias", (f"{p}{emb['proj']}.bias",), "copy")]
  for i in range(depth):
    r += _block_rules(f"encoder/block_{i:02d}", f"{p}{layer}.{i}.", scheme)
  r += [_Rule("encoder/norm/scale", (f"{p}{emb['norm']}.weight",), "copy"),
        _Rule("encoder/norm/bias", (f"{p}{emb['norm']}.bias",), "copy")]
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


def _op_doc(op: str, i: int = 0) -> str:
  if op == "split_linear":
    return f"[:, {i}*D:{i + 1}*D].T  (q|k|v split of the fused kernel [D, 3D])"
  if op == "split":
    return f"[{i}*D:{i + 1}*D]  (q|k|v split of the fused bias [3D])"
  return {"copy": "", "linear": ".T", "conv": ".transpose(3, 2, 0, 1)  ([p,p,C,D] -> [D,C,p,p])",
          "pos_enc": "", "pos_dec": ""}[op]


def _default_prefix(scheme: str, dec_depth) -> str:
  # ViTMAEForPreTraining nests its encoder under "vit."; timm / facebookresearch/mae do not.
  return "vit." if (dec_depth is not None and scheme != "timm") else ""


# ----------------------------------------------------------------------------- converters


def name_map(depth: int, dec_depth: int | None = None, scheme: str = "hf",
             prefix: str | None = None) -> dict[str, str]:
  """The documented map {torch name: "mae_jax flax path + transform"}.

  Args:
    depth: encoder blocks.
    dec_depth: decoder blocks, or None for the encoder alone.
    scheme: "hf", "hf_legacy" or "timm".
    prefix: prefix of the encoder names; default "vit." for the full HF model, else "".

  Returns:
    One entry per torch tensor; the fixed position tables say so instead of a path.
  """
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


def to_torch_state_dict(params: Mapping, grid_hw, *, scheme: str = "hf", full: bool = False,
                        prefix: str | None = None) -> dict[str, np.ndarray]:
  """mae_jax params -> PyTorch state dict (numpy float32 values, C-contiguous).

  Wrap for torch with `{k: torch.from_numpy(v) for k, v in sd.items()}`.

  Args:
    params: full MAE params {"encoder", "decoder"} or an encoder tree.
    grid_hw: patch grid (H/p, W/p), for the fixed position tables.
    scheme: "hf" (transformers >= 5), "hf_legacy" (transformers 4.x) or "timm".
    full: include the decoder (`ViTMAEForPreTraining`; timm: facebookresearch/mae names).
    prefix: prefix of the encoder names; default "vit." for the full HF model, else "".

  Returns:
    {torch name: array}.

  Raises:
    ValueError: `full` without decoder params, or a parameter with no PyTorch name.
  """
  enc, dec = split_params(params)
  if full and dec is None:
    raise ValueError("full=True needs the decoder params")
  flat = flat_numpy({"encoder": enc, "decoder": dec} if full else {"encoder": enc})
  dec_depth = _count_blocks(dec) if full else None
  prefix = _default_prefix(scheme, dec_depth) if prefix is None else prefix
  sd: dict[str, np.ndarray] = {}
  used = set()
  for rule in _rules(scheme, _count_blocks(enc), dec_depth, prefix):
    if rule.op == "pos_enc":
      outs = [pos_table(flat["encoder/cls_token"].shape[-1], grid_hw)]
    elif rule.op == "pos_dec":
      outs = [pos_table(flat["decoder/mask_token"].shape[-1], grid_hw)]
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
  """The name scheme ("hf", "hf_legacy" or "timm") of a state dict's keys."""
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


def _depth(flat: Iterable[str], layer_re: str) -> int | None:
  ids = [int(m.group(1)) for k in flat if (m := re.match(layer_re, k))]
  return 1 + max(ids) if ids else None


def from_torch_state_dict(sd: Mapping[str, Any], *, scheme: str = "auto",
                          grid_hw=None, encoder_only: bool = False, strict: bool = True,
                          check_pos_embed: bool = True) -> dict:
  """PyTorch ViTMAE / ViTMAEModel / ViTModel / timm state dict -> mae_jax params.

  Strips the "vit." (ViTMAEForPreTraining), "module." (DDP) and "_orig_mod."
  (torch.compile) prefixes.

  Args:
    sd: state dict with torch tensors or numpy arrays.
    scheme: "auto" (detect_scheme), "hf", "hf_legacy" or "timm".
    grid_hw: patch grid of the position tables; default the square grid that fits.
    encoder_only: leave a ViTMAE decoder out.
    strict: keys that are neither mapped nor a known other head (pooler, classifier
      head) are an error.
    check_pos_embed: the position tables must equal mae_jax's fixed sin-cos table (a
      learned or interpolated table cannot be carried over, and is an error).

  Returns:
    {"encoder": tree} plus "decoder": tree when the state dict holds a ViTMAE decoder
    (and not `encoder_only`): the shapes of `MAE` params, numpy float32, ready for
    `model.apply({"params": ...})` or to initialise probing / finetuning.
  """
  flat = {re.sub(r"^(module\.|_orig_mod\.)+", "", k): to_numpy(v) for k, v in sd.items()}
  if any(k.startswith("vit.") for k in flat):
    flat = {k[4:] if k.startswith("vit.") else k: v for k, v in flat.items()}
  scheme = detect_scheme(flat) if scheme == "auto" else scheme
  if scheme == "timm":
    layer_re, dec_re = r"blocks\.(\d+)\.", r"decoder_blocks\.(\d+)\."
  else:
    layer_re = r"layers\.(\d+)\." if scheme == "hf" else r"encoder\.layer\.(\d+)\."
    dec_re = r"decoder\.decoder_layers\.(\d+)\."
  dec_depth = None if encoder_only else _depth(flat, dec_re)
  out: dict[str, np.ndarray] = {}
  used = set()
  for rule in _rules(scheme, _depth(flat, layer_re) or 0, dec_depth, ""):
    missing = [t for t in rule.torch if t not in flat]
    if missing:
      raise KeyError(f"state dict ({scheme} names) lacks {missing}")
    used.update(rule.torch)
    xs = [flat[t] for t in rule.torch]
    if rule.op in ("pos_enc", "pos_dec"):
      if check_pos_embed:
        check_pos_table(rule.torch[0], xs[0], grid_hw)
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
  return traverse_util.unflatten_dict(out, sep="/")


def check_pos_table(name: str, table: np.ndarray, grid_hw=None) -> None:
  """Raises unless `table` [1, 1 + N, D] is mae_jax's fixed sin-cos table.

  Args:
    name: the tensor's name, for the error message.
    table: the position table read from a file.
    grid_hw: patch grid; default the square grid of N patches.

  Raises:
    ValueError: a non-square N without `grid_hw`, or a table that differs (a learned
      table cannot be carried over: mae_jax has no learned position embedding).
  """
  n = table.shape[-2] - 1
  if grid_hw is None:
    s = int(round(n ** 0.5))
    if s * s != n:
      raise ValueError(f"{name}: {n} patches is not a square grid; pass grid_hw")
    grid_hw = (s, s)
  want = pos_table(table.shape[-1], grid_hw)
  if table.reshape(want.shape).shape != want.shape or not np.allclose(
      table.reshape(want.shape), want, rtol=0, atol=1e-5):
    err = float(np.max(np.abs(table.reshape(want.shape) - want)))
    raise ValueError(
        f"{name} differs from mae_jax's fixed sin-cos table (max |diff| {err:.3g}); mae_jax "
        "has no learned position embedding, so these weights cannot be carried over as they "
        "are (pass check_pos_embed=False to drop the table anyway)")
