"""Optimizer from config: AdamW, warmup + cosine, weight-decay and frozen masks.

lr = base_lr * global_batch / 256 (the MAE scaling rule). Weight decay applies
to matrices only: biases, norm scales and the cls/mask tokens are skipped.
Frozen parameters (a regex on "/"-joined names) get exactly zero updates.
"""

from __future__ import annotations

import re

import jax
import optax
from flax import traverse_util

from mae_jax.errors import UsageError

NO_DECAY_NAMES = ("cls_token", "mask_token", "channel_embed")  # tokens and embedding tables


def path_names(tree) -> dict:
  """Same tree, each leaf replaced by its '/'-joined parameter name."""
  flat = traverse_util.flatten_dict(tree, sep="/")
  return traverse_util.unflatten_dict({k: k for k in flat}, sep="/")


def decay_mask(params):
  def decays(name, leaf):
    # frozen leaves arrive as optax MaskedNode (no ndim) inside multi_transform
    return getattr(leaf, "ndim", 0) >= 2 and name.split("/")[-1] not in NO_DECAY_NAMES
  return jax.tree.map(decays, path_names(params), params)


def frozen_mask(params, frozen_regex: str | None):
  """True where a parameter is frozen (its name matches `frozen_regex`)."""
  if not frozen_regex:
    return jax.tree.map(lambda _: False, params)
  pattern = re.compile(frozen_regex)
  return jax.tree.map(lambda name: bool(pattern.fullmatch(name)), path_names(params))


def layer_id(name: str, depth: int) -> int:
  """Depth of a parameter for layer-wise lr decay (BEiT/MAE convention).

  Embeddings and CLS are layer 0, encoder block i is layer i + 1, everything
  after the blocks (final norm, head) is layer depth + 1. ConvMAE's conv stages
  (`stage{k}_*`) and their fusion projections (`fuse{k}`, features of the early stages)
  and ChannelMAE's `channel_embed` count as embeddings (layer 0).
  """
  m = re.search(r"(?:^|/)encoder/block_(\d+)/", name)
  if m:
    return int(m.group(1)) + 1
  if re.search(r"(?:^|/)encoder/(patch_embed|cls_token|pos_embed|channel_embed|stage\d+_|fuse\d)",
               name):
    return 0
  return depth + 1


def layer_decay_multipliers(params, decay: float):
  """lr multiplier per parameter: decay ** (depth + 1 - layer_id)."""
  names = path_names(params)
  blocks = {int(m.group(1)) for n in jax.tree.leaves(names)
            for m in [re.search(r"encoder/block_(\d+)/", n)] if m}
  depth = max(blocks) + 1 if blocks else 0
  return jax.tree.map(lambda n: decay ** (depth + 1 - layer_id(n, depth)), names)


def learning_rate(config):
  """Peak lr scaled by batch, linear warmup from 0 then cosine to `min_lr`."""
  peak = config.lr * config.batch_size / 256.0
  total = max(int(config.total_steps), 1)
  warmup = min(int(config.warmup_steps), total)
  if warmup >= total:
    return optax.linear_schedule(0.0, peak, max(warmup, 1))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total,
      end_value=config.get("min_lr", 0.0))


def make_optimizer(config, params):
  """Returns (optax transform, schedule)."""
  schedule = learning_rate(config)
  opt = config.optim
  chain = []
  if opt.get("grad_clip_norm", 0.0):
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  chain.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.get("eps", 1e-8),
                           weight_decay=opt.weight_decay, mask=decay_mask))
  decay = opt.get("layer_decay", 1.0)
  if decay != 1.0 and opt.get("frozen", ""):
    raise UsageError("optim.layer_decay and optim.frozen cannot be combined; freeze or decay")
  if decay != 1.0:  # scales AdamW's whole update (step and decay), as per-group lrs do
    multipliers = layer_decay_multipliers(params, decay)
    chain.append(optax.GradientTransformation(
        lambda _: optax.EmptyState(),
        lambda updates, state, params=None: (
            jax.tree.map(lambda u, m: u * m, updates, multipliers), state)))
  tx = optax.chain(*chain)
  frozen = frozen_mask(params, opt.get("frozen", None))
  if any(jax.tree.leaves(frozen)):
    labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen)
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule
