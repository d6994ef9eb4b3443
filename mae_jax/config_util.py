"""Helpers for configs: finding them (`--config pretrain:variant=tiny` or a file path
`--config configs/pretrain.py:variant=tiny`), their `variant=base,steps=10` arguments,
`--config.FIELD=VALUE` overrides and the fields every stage shares."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys

from mae_jax.errors import UsageError

# The configs that ship with mae_jax: configs/ at the top of the repository, installed as the
# package mae_jax.configs (pyproject.toml maps the directory), so that an installed
# mae_jax finds them wherever it runs.
CONFIG_NAMES = ("pretrain", "probe", "finetune", "scratch", "resnet")


def configs_package():
  """The package `mae_jax.configs`. Installed (wheel or editable) it is importable as it is;
  a source checkout used without installing (PYTHONPATH=repo) registers configs/ beside
  mae_jax/ under that name, so that both find the same modules the same way."""
  try:
    return importlib.import_module("mae_jax.configs")
  except ModuleNotFoundError as e:
    if e.name != "mae_jax.configs":
      raise
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  spec = importlib.util.spec_from_file_location(
      "mae_jax.configs", os.path.join(root, "__init__.py"), submodule_search_locations=[root])
  if spec is None or not os.path.exists(spec.origin):
    raise ModuleNotFoundError("mae_jax.configs is not installed and there is no configs/ "
                              f"beside the mae_jax package ({root})", name="mae_jax.configs")
  module = importlib.util.module_from_spec(spec)
  sys.modules["mae_jax.configs"] = module
  spec.loader.exec_module(module)
  return module


def config_module(name: str):
  """The config module `name` (one of CONFIG_NAMES), e.g. config_module("pretrain")."""
  if name not in CONFIG_NAMES:
    raise UsageError(f"no config named {name!r}; the configs are {', '.join(CONFIG_NAMES)}")
  configs_package()
  return importlib.import_module(f"mae_jax.configs.{name}")


def resolve_config_arg(value: str) -> str:
  """'pretrain:variant=tiny' -> '<installed path>/pretrain.py:variant=tiny'; a path to an
  existing file is kept; a missing file is a one-line error naming it and the short names."""
  path, sep, arg = value.partition(":")
  if os.path.isfile(path):
    return value
  if path in CONFIG_NAMES:
    return config_module(path).__file__ + sep + arg
  raise UsageError(f"--config {value}: no such config file {path!r} (from "
                   f"{os.getcwd()}); the configs that ship with mae_jax are named "
                   f"{', '.join(CONFIG_NAMES)}, e.g. --config pretrain:variant=tiny")


def load_config(value: str):
  """The config that `--config VALUE` names (short name or file path, ':ARG' optional);
  a config whose `get_config` rejects ARG is a UsageError naming it."""
  path, _, arg = resolve_config_arg(value).partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"{name}_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise UsageError(f"--config {value}: {path} is not valid Python: {e}") from None
  if not hasattr(module, "get_config"):
    raise UsageError(f"--config {value}: {path} has no get_config(arg) function")
  try:
    return module.get_config(arg or None)
  except UsageError as e:
    raise UsageError(f"--config {value}: {e}") from None


def parse_arg(arg: str | None, **defaults) -> dict:
  """'variant=base,steps=10' -> {'variant': 'base', 'steps': 10} over `defaults`.

  Values are converted to the type of their default; an unknown key is an error
  naming the keys that exist (a typo must not be silently ignored).
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise UsageError(f"config argument {item!r} must look like key=value")
    key, value = item.split("=", 1)
    if key not in defaults:
      raise UsageError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.lower() in ("1", "true", "yes")
    elif defaults[key] is None:
      out[key] = value
    else:
      out[key] = kind(value)
  return out


def apply_overrides(config, overrides):
  """'--config.a.b=v' strings onto `config` with ml_collections' own flag parsing (typed
  like the field, tuples as literals); an unknown field or a bad value is a ValueError
  naming it and, for a typo, the closest field."""
  from absl import flags
  from ml_collections import config_flags
  argv = ["mae_jax"] + list(overrides)
  fv = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict("config", config, flag_values=fv,
                                    lock_config=config.is_locked, sys_argv=argv)
    fv(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    raise UsageError(describe_override_error(e, overrides)) from None
  return fv.config


def describe_override_error(e: Exception, overrides) -> str:
  """One line for a bad `--config.x=y`: the override at fault and, for a typo, the closest
  field name (ml_collections' own suggestion)."""
  text = str(e).replace("\\n", " ").replace("\n", " ")
  if isinstance(e, (AttributeError, KeyError)):
    field = re.search(r"'([^'\\]+)\\?'", text)
    field = field.group(1) if field else "?"
    bad = next((o for o in overrides if re.search(rf"[.]{re.escape(field)}(=|$)",
                                                  o.split("=", 1)[0] + "=")), field)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    return (f"{bad.split('=', 1)[0]}: unknown config field {field!r}"
            + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
  return " ".join(text.split())


def base_config(variant: str = "tiny", patch: int = 5):
  """Fields every stage shares; each file in configs/ starts from this and changes a few."""
  import ml_collections

  c = ml_collections.ConfigDict()
  c.stage = "pretrain"
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # a directory written by `python -m mae_jax.data.convert`
  c.data.train_split = "train"
  c.data.eval_split = "validation"  # selects the checkpoint ("" = none)
  c.data.test_split = "test"  # evaluated once at the end ("" = never)
  # > 0: train on a class-balanced subset of this many labelled jets of the train split,
  # seeded by `seed` and nested (the subset of n lies inside that of any m > n)
  c.data.train_examples = 0
  c.data.normalization = "log1p"  # none | div255 | log1p | zscore | log1p_zscore
  # training batches only: flip each jet along η (image axis 0), φ (axis 1) or each
  # independently, with probability 1/2 (data/augment.py): none | eta | phi | both
  c.data.reflect = "none"
  c.data.shuffle_buffer = 10_000
  c.data.host_split = "shard"  # shard | interleave (global batches independent of process count)
  # sparse tokens: token lists are padded to a multiple of this (few compiled lengths)
  c.data.token_bucket = 16
  # sparse tokens, training: sort windows of this many batches by occupancy so that each
  # batch pads little (0 = off; classifier stages keep it off: it groups jets by class)
  c.data.sort_window = 0
  # a record that cannot be read (corrupted shard): stop (one line naming the shard file) |
  # skip (the rest of that shard is skipped; counted as unreadable_records in the metrics)
  c.data.on_corrupt = "stop"

  c.model = ml_collections.ConfigDict()
  c.model.name = "mae"  # mae | depthwise_mae | convstem_mae | convmae | channel_mae | classifier | resnet15 | resnet50
  c.model.variant = variant
  c.model.patch = patch
  c.model.mask_ratio = 0.75
  c.model.dec_depth = 0  # MAE decoder blocks; 0 = the variant's own (models/vit.py VARIANTS)
  # MAE decoder output layer: xavier (the MAE reference's) | zeros (starts at predict-zeros;
  # the compressive decoder always does)
  c.model.pred_init = "xavier"
  c.model.norm_pix_loss = False
  c.model.dtype = "float32"  # compute dtype; "bfloat16" keeps float32 parameters
  c.model.drop_path = 0.0
  # dense: every patch is a token; sparse: only occupied patches (ViT MAE; models/sparse.py)
  c.model.tokens = "dense"
  c.model.empty_queries = 0  # sparse: random empty patches per jet added as decoder queries
  # sparse: K > 0 = compressive MAE, the decoder sees the jet only through K latent vectors
  # of width latent_dim (0 = encoder width); models/compressive.py. 0 = the plain sparse MAE
  c.model.latents = 0
  c.model.latent_dim = 0
  # Softmax-attention kernel: auto | xla | cudnn | cpu_kernel (models/attention.py).
  c.model.attention = "auto"
  c.model.backbone = "mae"  # classifier only: which MAE-family encoder
  c.model.pool = "mean"  # classifier only: cls | mean | max
  c.model.head_bn = False  # classifier only: BatchNorm (no affine) before the linear head
  c.model.include_cls = False  # classifier only: mean/max pooling over CLS too
  # classifier only: std of the head's truncated-normal init (MAE: 0.01 probe, 2e-5 finetune)
  c.model.head_init_std = 0.01

  c.model_init = ""  # workdir of a run whose parameters initialise this one
  c.model_load = ""  # "src:dst" sub-tree pairs, e.g. "encoder:backbone/encoder"

  c.task = ml_collections.ConfigDict()
  c.task.name = "mae"  # mae | classify | regress
  c.task.label_smoothing = 0.0
  c.task.targets = "jet_mass"  # regress: comma-separated target names from the dataset
  c.task.loss = "mse"  # regress: mse | huber
  c.task.huber_delta = 1.0
  c.task.bootstrap = 200  # resamples for the uncertainties of classification metrics
  c.task.target = "pixels"  # mae: what the prediction is compared with (tasks/targets/)
  # target "codes": the k-means codebook's size (code 0: empty patches; the decoder predicts
  # one logit per code) and how many train jets it is fitted on (tasks/targets/codes.py)
  c.task.codebook_size = 256
  c.task.codebook_jets = 500

  c.batch_size = 256  # global, over all devices and hosts
  c.total_steps = 10_000
  c.warmup_steps = 500
  c.lr = 1.5e-4  # base lr; the peak is lr * batch_size / 256
  c.min_lr = 0.0
  c.optim = ml_collections.ConfigDict()
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.05
  c.optim.grad_clip_norm = 0.0  # 0 = off
  c.optim.layer_decay = 1.0  # < 1: layer-wise lr decay (finetuning)
  c.optim.frozen = ""  # regex over "/"-joined parameter names

  # mesh axes (name, size), -1 = all remaining devices; add ("fsdp", N) to split parameters
  # over N devices: --config.mesh="(('data', -1), ('fsdp', 2))"
  c.mesh = (("data", -1),)

  c.log_every = 10
  c.eval_every = 0  # 0 = only at the end
  c.ckpt_every = 500
  c.keep_ckpts = 3
  c.nan_policy = "stop"  # stop | skip (skipped steps are counted and logged)
  c.figures = True
  c.overwrite = False  # allow a different config in a workdir without checkpoints

  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = -1
  c.distributed.process_id = -1
  return c


def classifier_config(stage: str, arg):
  """Probe and finetune: a classifier on an MAE-family encoder loaded from a pretrain run.

  Arguments: variant, patch, model (the MAE family of the pretrain run), pool,
  tokens (dense | sparse, as the pretrain run).
  """
  arg = parse_arg(arg, variant="tiny", patch=5, model="mae", pool="mean", tokens="dense")
  c = base_config(arg["variant"], arg["patch"])
  c.stage = stage
  c.task.name = "classify"
  c.model.name = "classifier"
  c.model.backbone = arg["model"]
  c.model.pool = arg["pool"]
  c.model.tokens = arg["tokens"]
  c.model_load = "encoder:backbone/encoder"
  c.figures = False
  return c
