"""`--format hf`: a directory that `transformers.ViTMAEModel.from_pretrained(DIR)` loads.

  DIR/config.json          ViTMAEConfig (mask_ratio 0: the encoder sees every token it is given)
  DIR/model.safetensors    the encoder's weights (transformers names)
  DIR/normalization.json   the input normalisation and the dataset's channel statistics
  DIR/mae_jax.json         the export sidecar (model spec, token mode, feature recipe)
  DIR/README.md            a model card: data, variant, token mode, features, protocol numbers

Needs the torch extra (torch, transformers, safetensors): `pip install 'mae_jax[torch]'`.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

from mae_jax.errors import UsageError

EXTRA = "pip install 'mae_jax[torch]'"


def require(fmt: str, modules) -> None:
  """A one-line UsageError naming the extra when a module `fmt` needs is not installed."""
  for m in modules:
    try:
      __import__(m)
    except ImportError:
      raise UsageError(f"--format {fmt} needs the Python package {m!r}, which is not "
                       f"installed: {EXTRA}") from None


def _results(workdir: str | None) -> tuple[str, dict] | None:
  """The protocol's results.json of the run (in the workdir or up to two levels above)."""
  d = workdir
  for _ in range(3):
    if not d:
      return None
    path = os.path.join(d, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        return path, json.load(f)
    d = os.path.dirname(d)
  return None


def _numbers(tree, prefix="", out=None, limit=40):
  """'key.path: value' lines of the numbers in a results tree (the first `limit`)."""
  out = [] if out is None else out
  if isinstance(tree, dict):
    for k, v in tree.items():
      _numbers(v, f"{prefix}{k}.", out, limit)
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and len(out) < limit:
    out.append(f"- `{prefix[:-1]}`: {tree:.6g}")
  return out


def model_card(sidecar: Mapping, meta: Mapping | None, workdir: str | None) -> str:
  spec, feats, inp = sidecar["model"], sidecar["features"], sidecar["input"]
  data = (meta or {}).get("inputs") or ["(dataset metadata not available)"]
  lines = [
      f"# mae_jax masked-autoencoder encoder ({spec['variant']}, {spec.get('tokens', 'dense')} "
      "tokens)", "",
      "Encoder of a ViT masked autoencoder pretrained with mae_jax on CMS jet images.", "",
      "## Training data", "",
      *[f"- `{p}`" for p in data],
      f"- image shape {spec['image_shape']} (H, W, C), channels {inp.get('channel_names')}",
      f"- labels: {(meta or {}).get('label_names')}", "",
      "## Model", "",
      f"- variant `{spec['variant']}`: width {spec['width']}, depth {spec['depth']}, heads "
      f"{spec['heads']}, patch {spec['patch']}, checkpoint step {sidecar.get('checkpoint_step')}",
      f"- token mode: **{feats['token_mode']}**" + (
          " (only the patches with a non-zero pixel are tokens)"
          if feats["token_mode"] == "sparse" else ""), "",
      "## Use", "",
      "```python",
      "import json, numpy as np, transformers",
      "from mae_jax.export import normalize_images, torch_features",
      "model = transformers.ViTMAEModel.from_pretrained(DIR).eval()",
      "spec = json.load(open(f'{DIR}/normalization.json'))",
      "x = normalize_images(raw_images_nhwc, spec)",
      f"feats = torch_features(model, x, patch={spec['patch']}, "
      f"tokens={feats['token_mode']!r})  # {{'cls', 'mean'}}",
      "```", "",
      f"Input normalisation: `{inp['normalization']}` = `{inp['formula']}` per channel, "
      "statistics in `normalization.json`.",
      f"Features: mean = {feats['mean']}; cls = {feats['cls']}.", "",
      "## Protocol results", "",
  ]
  found = _results(workdir)
  if found:
    lines += [f"From `{found[0]}`:", "", *_numbers(found[1])]
  else:
    lines += ["No protocol results file was found next to the run."]
  return "\n".join(lines) + "\n"


def export_hf(encoder_sd: Mapping[str, np.ndarray], sidecar: dict, output: str,
              meta: Mapping | None = None, workdir: str | None = None) -> None:
  """Writes the directory `output` (see the module docstring)."""
  require("hf", ("torch", "transformers", "safetensors"))
  import torch
  import transformers

  config = transformers.ViTMAEConfig(**sidecar["transformers"]["config"])
  model = transformers.ViTMAEModel(config)
  model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                         for k, v in encoder_sd.items()}, strict=True)
  os.makedirs(output, exist_ok=True)
  model.save_pretrained(output, safe_serialization=True)
  with open(os.path.join(output, "normalization.json"), "w") as f:
    json.dump(sidecar["input"], f, indent=1)
  with open(os.path.join(output, "mae_jax.json"), "w") as f:
    json.dump(sidecar, f, indent=1)
  with open(os.path.join(output, "README.md"), "w") as f:
    f.write(model_card(sidecar, meta, workdir))
