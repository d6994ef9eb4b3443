"""What the compressive MAE's loss is to be read against, without training (docs/physics.md,
the compression stage's diagnosis)::

    python benchmarks/compression_floors.py DATA_DIR [--latents 16 --latent_dim 8]

On the occupied patches of the test split, in the training loss's units (per-pixel MSE of
log1p-normalised pixels, every occupied patch): predicting empty patches (the trainer's
"predict zeros"); the train split's mean occupied patch; its mean patch at each grid
position. The last two ignore the jet, so a decoder that uses its latent must beat them.
Then the loss of the untrained model on the first 16 test jets for two seeds, with the
output projection as built (zero-initialised) and with the ViT's Xavier init in its place.
"""

from __future__ import annotations

import argparse

import numpy as np


def occupied_patches(pipe, split, patch, max_jets=10**9):
  """[N, G, p*p*C] normalised patches of a split's jets and [N, G] their occupancy."""
  xs, occ = [], []
  _, it = pipe.eval_iter(split, 64, 64)
  for b in it:
    x = np.asarray(b["image"])[np.asarray(b["valid"]) > 0]
    n, h, w, c = x.shape
    p = x.reshape(n, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    p = p.reshape(n, (h // patch) * (w // patch), patch * patch * c)
    xs.append(p)
    occ.append(np.any(p != 0, -1))
    if sum(len(o) for o in occ) >= max_jets:
      break
  return np.concatenate(xs)[:max_jets], np.concatenate(occ)[:max_jets]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("data_dir")
  ap.add_argument("--latents", type=int, default=16)
  ap.add_argument("--latent_dim", type=int, default=8)
  ap.add_argument("--max_train_jets", type=int, default=2000)
  args = ap.parse_args(argv)
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  from mae_jax import config_util, experiment, tasks
  from mae_jax.data import pipeline as pipeline_lib
  from mae_jax.models import vit

  cfg = config_util.config_module("pretrain").get_config("variant=tiny,tokens=sparse")
  cfg.model.latents, cfg.model.latent_dim = args.latents, args.latent_dim
  cfg.data.dir = args.data_dir
  raw = pipeline_lib.Pipeline(args.data_dir, cfg.data.normalization)
  tr, otr = occupied_patches(raw, "train", cfg.model.patch, args.max_train_jets)
  te, ote = occupied_patches(raw, "test", cfg.model.patch)
  t = te[ote]
  mean = tr[otr].mean(0)
  count = otr.sum(0)[:, None]
  by_pos = np.where(count > 0, (tr * otr[..., None]).sum(0) / np.maximum(count, 1), mean)
  print(f"{len(tr)} train / {len(te)} test jets, {ote.sum(1).mean():.1f} occupied patches "
        f"per test jet, {(t != 0).mean():.3f} of their values non-zero")
  print(f"test MSE, predict empty patches:         {(t ** 2).mean():.5f}")
  print(f"test MSE, train's mean occupied patch:   {((t - mean) ** 2).mean():.5f}")
  print(f"test MSE, train's mean patch per position: "
        f"{((t - np.broadcast_to(by_pos, te.shape)[ote]) ** 2).mean():.5f}")

  pipe = experiment.make_pipeline(cfg, args.data_dir, train=False)
  model = experiment.build_model(cfg, pipe.image_shape)
  task = tasks.build(cfg)
  _, it = pipe.eval_iter("test", 16, 16)
  batch = next(it)
  for seed in (0, 1):
    params = model.init({"params": jax.random.key(seed), "masking": jax.random.key(0),
                         "dropout": jax.random.key(0)},
                        jnp.zeros((1, *pipe.image_shape)), train=False)["params"]
    flat = traverse_util.flatten_dict(params)
    key = ("latent_decoder", "pred", "kernel")
    xavier = dict(flat)
    xavier[key] = vit.dense_init(jax.random.key(100 + seed), flat[key].shape)
    for name, p in (("as built (zero init)", params),
                    ("Xavier init", traverse_util.unflatten_dict(xavier))):
      out = model.apply({"params": p}, batch["image"], train=False,
                        patch_ids=batch["patch_ids"])
      print(f"seed {seed}, output projection {name}: loss {float(task.loss(out, batch)):.4f}, "
            f"prediction std {float(jnp.std(out[0])):.3f} (16 test jets)")


if __name__ == "__main__":
  main()
