"""Encoder export and PyTorch interoperability (docs/export.md).

`python -m mae_jax.export --workdir DIR --format FMT --output PATH` (cli.py) writes
the encoder of a pretraining checkpoint to PATH and a JSON sidecar PATH.json (model
config, input normalisation with the dataset's channel statistics, checkpoint step,
format, parameter name map, mae_jax version).

Modules, one job each:
  specs    the model spec of a model instance; transformers ViTMAEConfig / ViTConfig
           and the timm constructor that match it.
  names    flax <-> PyTorch names (hf, hf_legacy, timm) and tensor layouts:
           to_torch_state_dict, from_torch_state_dict, detect_scheme, name_map.
  formats  npz / safetensors / msgpack / torch files and the JSON sidecar:
           export_encoder, load_encoder, input_spec, normalize_images.
  run      a training workdir: load_run (config, model, dataset metadata) and
           restore_params (the params subtree of a checkpoint).
  torch_features  PyTorch features that match mae_jax's (sparse tokens: occupied patches).
  cli      the command line above.

Hybrid encoders (depthwise_mae, convstem_mae, convmae, channel_mae) have no
transformers/timm counterpart: every format writes their flax names and layouts
(names "flax"), and `load_encoder` + the registry class rebuild the encoder.
"""

from mae_jax.export.cli import main
from mae_jax.export.formats import FORMATS
from mae_jax.export.formats import export_encoder
from mae_jax.export.formats import input_spec
from mae_jax.export.formats import load_encoder
from mae_jax.export.formats import normalize_images
from mae_jax.export.names import FLAX_SCHEME
from mae_jax.export.names import SCHEMES
from mae_jax.export.names import check_pos_table
from mae_jax.export.names import detect_scheme
from mae_jax.export.names import from_torch_state_dict
from mae_jax.export.names import name_map
from mae_jax.export.names import to_torch_state_dict
from mae_jax.export.run import load_run
from mae_jax.export.run import restore_params
from mae_jax.export.specs import hf_config_kwargs
from mae_jax.export.specs import model_name
from mae_jax.export.specs import model_spec
from mae_jax.export.specs import timm_constructor
from mae_jax.export.specs import vit_config
from mae_jax.export.specs import vitmae_config
from mae_jax.export.torch_features import torch_features

__all__ = [
    "FLAX_SCHEME", "FORMATS", "SCHEMES", "check_pos_table", "detect_scheme",
    "export_encoder", "from_torch_state_dict", "hf_config_kwargs", "input_spec",
    "load_encoder", "load_run", "main", "model_name", "model_spec", "name_map",
    "normalize_images", "restore_params", "timm_constructor", "to_torch_state_dict",
    "torch_features",
    "vit_config", "vitmae_config",
]
