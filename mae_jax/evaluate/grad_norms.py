r"""Gradient norms of MAE-family models at initialisation, on real batches.

  python -m mae_jax.evaluate.grad_norms --data data_cache/boosted_top_3000_tfds \
      --models mae,depthwise_mae,convstem_mae,convmae --variants tiny,e2e-base --batch 8 \
      [--steps 20 --lr 6.25e-4] [--conv-ln-eps 1e-6]

A diagnostic for sparse detector images: most pixels are empty, and a per-pixel
LayerNorm over an all-zero feature vector multiplies gradients by scale/sqrt(eps)
(see `models.conv.SPARSE_LN_EPS`). Prints, per model, the global norm of d loss / d params
at initialisation and the parameter holding the largest entry; with `--steps N` also
N AdamW steps on successive batches (the step-1 and largest global norms, and the mean
loss of the last 5 steps). `--conv-ln-eps` overrides ConvMAE's conv-stage eps.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _loss(model, params, images, key):
  """The MAE task's training loss of the model on images (masking from key)."""
  from mae_jax.tasks import mae as mae_task
  from mae_jax.tasks.targets import pixels
  out = model.apply({"params": params}, images, rngs={"masking": key})
  return mae_task.objective(pixels.Targets.for_model(model), out, images)


def init_grad_norm(model, images, seed=0):
  """(global norm, path of the parameter with the largest |entry|, that |entry|) at init."""
  rngs = {"params": jax.random.key(seed), "masking": jax.random.key(seed + 1)}
  params = model.init(rngs, images[:1])["params"]
  loss = lambda p: _loss(model, p, images, jax.random.key(seed + 2))  # noqa: E731
  grads = jax.jit(jax.grad(loss))(params)
  leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
  # NaN ranks first: the parameter to blame when the diagnostic matters most
  path, worst = max(leaves, key=lambda kv: float(jnp.nan_to_num(jnp.abs(kv[1]), nan=jnp.inf).max()))
  return float(optax.tree.norm(grads)), jax.tree_util.keystr(path), float(jnp.abs(worst).max())


def adamw_run(model, batches, lr, seed=0):
  """Global gradient norms and losses over AdamW steps, one batch each."""
  rngs = {"params": jax.random.key(seed), "masking": jax.random.key(seed + 1)}
  params = model.init(rngs, batches[0][:1])["params"]
  tx = optax.adamw(lr, weight_decay=0.05)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, images, key):
    loss, grads = jax.value_and_grad(
        lambda p: _loss(model, p, images, key))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

  norms, losses = [], []
  for i, images in enumerate(batches):
    params, opt_state, loss, norm = step(params, opt_state, images, jax.random.key(100 + i))
    norms.append(float(norm))
    losses.append(float(loss))
  return norms, losses


def build(name, variant, patch, channels, conv_ln_eps=None):
  from mae_jax.models import registry, vit
  from mae_jax.models.hybrids import convmae
  classes = registry.MAE_FAMILY
  if name not in classes:
    raise ValueError(f"--models: unknown model {name!r}; known: {sorted(classes)}")
  if conv_ln_eps is not None and name == "convmae":
    size, fixed = vit.decode_variant(convmae.CONVMAE_VARIANTS, variant, "ConvMAE")
    entry = f"{variant.split('/')[0]}-eps{conv_ln_eps:g}".replace(".", "p").replace("+", "")
    convmae.CONVMAE_VARIANTS[entry] = dataclasses.replace(size, conv_ln_eps=conv_ln_eps)
    variant = entry if fixed is None else f"{entry}/{fixed}"
  return classes[name](variant=variant, patch=patch, channels=channels)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", required=True, help="converted dataset (its train split is read)")
  p.add_argument("--models", default="mae,depthwise_mae,convstem_mae,convmae")
  p.add_argument("--variants", default="tiny")
  p.add_argument("--patch", type=int, default=5)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=0, help="also run this many AdamW steps")
  p.add_argument("--lr", type=float, default=6.25e-4)
  p.add_argument("--conv-ln-eps", type=float, default=None)
  args = p.parse_args(argv)
  from mae_jax.data.pipeline import Pipeline
  it = Pipeline(args.data).train_iter("train", args.batch, seed=0)
  batches = [jnp.asarray(next(it)["image"]) for _ in range(max(args.steps, 1))]
  channels = batches[0].shape[-1]
  occupied = float((np.abs(np.asarray(batches[0])).sum(-1) > 0).mean())
  print(f"{args.data}: batch {args.batch}, {100 * occupied:.1f}% of pixels occupied")
  for variant in args.variants.split(","):
    for name in args.models.split(","):
      model = build(name, variant, args.patch, channels, args.conv_ln_eps)
      norm, where, entry = init_grad_norm(model, batches[0])
      line = f"{name:14s} {variant:9s} step-1 grad norm {norm:10.4g} (largest |entry| {entry:.3g} in {where})"
      if args.steps:
        norms, losses = adamw_run(model, batches, args.lr)
        line += (f"; {args.steps} AdamW steps: max grad norm {max(norms):.4g}, "
                 f"loss {losses[0]:.5f} -> {np.mean(losses[-5:]):.5f} (mean of last 5)")
      print(line, flush=True)


if __name__ == "__main__":
  main()
