r"""`python -m mae_jax.export`: export the encoder of a pretraining checkpoint.

  python -m mae_jax.export --workdir DIR [--step N] \
      --format {npz,safetensors,msgpack,torch,hf} --output PATH \
      [--names {hf,hf_legacy,timm,flax}] [--image-shape H,W,C]

Prints one JSON line on success (exit 0); a missing or mismatched checkpoint or
dataset metadata prints one `error: ...` line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from mae_jax import errors
from mae_jax.export import formats
from mae_jax.export import names
from mae_jax.export import run as run_lib
from mae_jax.export import specs


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m mae_jax.export",
      description="Export the encoder of a mae_jax pretraining checkpoint (see docs/export.md).")
  p.add_argument("--workdir", required=True, help="training workdir (checkpoints/, config.json)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--format", required=True, choices=formats.FORMATS)
  p.add_argument("--output", required=True,
                 help="output file (the sidecar is OUTPUT.json); for --format hf a directory "
                      "that transformers.ViTMAEModel.from_pretrained loads")
  p.add_argument("--names", default=None, choices=names.SCHEMES + (names.FLAX_SCHEME,),
                 help="names for safetensors/torch: hf (transformers >= 5; the ViT MAE's "
                      "default), hf_legacy (transformers 4.x), timm, flax (flax names and "
                      "layouts; the only one, and the default, for hybrid models)")
  p.add_argument("--image-shape", default=None,
                 help="H,W,C when the dataset directory of the run is gone")
  return p


def _image_shape(text: str | None):
  if not text:
    return None
  try:
    shape = tuple(int(s) for s in text.split(","))
  except ValueError:
    shape = ()
  if len(shape) != 3:
    _parser().error(f"--image-shape must be H,W,C, got {text!r}")
  return shape


def main(argv=None) -> int:
  """Runs the CLI on `argv` (default sys.argv[1:]); returns the exit status."""
  a = _parser().parse_args(argv)
  image_shape = _image_shape(a.image_shape)
  if not os.path.exists(os.path.join(a.workdir, "config.json")):
    _parser().error(f"{a.workdir} has no config.json (not a mae_jax training workdir)")
  try:
    run = run_lib.load_run(a.workdir, image_shape)
    params, step = run_lib.restore_params(a.workdir, run["model"], run["image_shape"], a.step)
    spec = specs.model_spec(run["model"], run["image_shape"])
    normalization = (run["config"].get("data") or {}).get("normalization", "none")
    inp = formats.input_spec(run["meta"], normalization)
    if inp["stats_missing"]:
      print(f"warning: dataset metadata not found under data.dir={run['data_dir']!r}: the "
            "sidecar records that the channel statistics are missing", file=sys.stderr)
    scheme = a.names or ("hf" if spec["model"] == "mae" else names.FLAX_SCHEME)
    sidecar = formats.export_encoder(params, spec, a.format, a.output, scheme=scheme,
                                     step=step, input=inp,
                                     extra={"workdir": os.path.abspath(a.workdir)},
                                     meta=run["meta"])
  except errors.USER_ERRORS as e:
    return errors.exit_status(e)
  n = sum(int(np.prod(np.shape(v))) for v in names.flat_numpy(params["encoder"]).values())
  where = os.path.join(a.output, "mae_jax.json") if a.format == "hf" else a.output + ".json"
  print(json.dumps({"output": os.path.abspath(a.output), "sidecar": where,
                    "format": a.format, "step": step, "encoder_params": n,
                    "names": sidecar["name_scheme"]}))
  return 0
