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

NO_DECAY_NAMES = ("cls_token", "mask_token")


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
  tx = optax.chain(*chain)
  frozen = frozen_mask(params, opt.get("frozen", None))
  if any(jax.tree.leaves(frozen)):
    labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen)
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule
