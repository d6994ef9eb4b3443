r"""Bit-identity check for refactors of the MAE objective (issue 24 item 1).

  python benchmarks/objective_parity.py dump /tmp/arch_before   # on the old code
  python benchmarks/objective_parity.py dump /tmp/arch_after    # on the new code
  python benchmarks/objective_parity.py compare /tmp/arch_before /tmp/arch_after

For each MAE family at the tiny variant (ViT MAE dense, sparse tokens, depthwise, convstem,
convmae, channel), a fixed seed and a fixed small batch, it dumps to FAMILY.npz the training
loss, the model outputs (aux arrays), the gradients of one train step (through the
trainer's own `experiment.apply_model` + `task.loss`), the parameters after that step (the
jitted `experiment.train_step`) and the parameter names/shapes. `compare` requires
np.array_equal on every array the two dumps share and identical parameter names; keys
present on one side only (an aux entry that moved from model to task) are listed.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

FAMILIES = {"mae": ("mae", "dense"), "sparse": ("mae", "sparse"),
            "depthwise": ("depthwise_mae", "dense"), "convstem": ("convstem_mae", "dense"),
            "convmae": ("convmae", "dense"), "channel": ("channel_mae", "dense")}
SHAPE = (25, 25, 3)


def _config(model, tokens):
  import importlib.util
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location("pretrain", os.path.join(root, "configs",
                                                                         "pretrain.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(f"variant=tiny,model={model},tokens={tokens}")
  c.batch_size = 8
  c.total_steps, c.warmup_steps = 10, 2
  return c


def _batch(tokens):
  rng = np.random.default_rng(0)
  x = np.zeros((8, *SHAPE), np.float32)
  hit = rng.random(x.shape) < 0.06
  x[hit] = rng.exponential(2.0, int(hit.sum()))
  batch = {"image": jnp.asarray(x), "valid": jnp.ones((8,), jnp.float32)}
  if tokens == "sparse":
    from mae_jax.models import sparse
    batch["patch_ids"] = sparse.occupied_patch_ids(batch["image"], 5, 16)
  return batch


def dump_family(name, out_dir):
  from mae_jax import experiment, parallel, tasks
  model_name, tokens = FAMILIES[name]
  config = _config(model_name, tokens)
  mesh = parallel.make_mesh(config.mesh)
  model = experiment.build_model(config, SHAPE)
  setup = experiment.create_state(config, model, mesh, SHAPE)
  task = tasks.build(config)
  batch = _batch(tokens)
  params = jax.device_get(setup.state["params"])
  mask_key, drop_key = experiment.step_keys(config.seed, 0)

  def loss_fn(p):
    out, _ = experiment.apply_model(model, p, {}, batch, True, mask_key, drop_key)
    return task.loss(out, batch), out

  (loss, out), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  step = experiment.make_train_step(config, model, task, setup, mesh)
  state, metrics = step(setup.state, parallel.global_batch(jax.device_get(batch), mesh))
  ev = jax.jit(lambda p, b: experiment.eval_step(p, {}, b, 0, config=config, model=model,
                                                 task=task))(params, batch)
  arrays = {"loss": np.asarray(loss), "step_loss": np.asarray(metrics["loss"]),
            "grad_norm": np.asarray(metrics["grad_norm"])}
  arrays.update({f"aux/{k}": np.asarray(v) for k, v in out[1].items()})
  arrays.update({f"eval/{k}": np.asarray(v) for k, v in ev.items()})
  arrays.update({f"grad/{k}": np.asarray(v)
                 for k, v in traverse_util.flatten_dict(grads, sep="/").items()})
  arrays.update({f"new_params/{k}": np.asarray(v) for k, v in traverse_util.flatten_dict(
      jax.device_get(state["params"]), sep="/").items()})
  np.savez(os.path.join(out_dir, f"{name}.npz"), **arrays)
  print(f"{name}: loss {float(loss):.6f}, {len(arrays)} arrays")


def compare(a_dir, b_dir) -> bool:
  ok = True
  for name in FAMILIES:
    a, b = np.load(os.path.join(a_dir, f"{name}.npz")), np.load(os.path.join(b_dir, f"{name}.npz"))
    shared = sorted(set(a.files) & set(b.files))
    diff = [k for k in shared if not (a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]))]
    params_a = sorted(k for k in a.files if k.startswith("new_params/"))
    params_b = sorted(k for k in b.files if k.startswith("new_params/"))
    only = sorted(set(a.files) ^ set(b.files))
    same = not diff and params_a == params_b
    ok &= same
    print(f"{name}: {len(shared)} shared arrays, {'bit-identical' if same else 'DIFFERENT'}"
          + (f"; differ: {diff}" if diff else "") + (f"; on one side only: {only}" if only else ""))
  return ok


if __name__ == "__main__":
  if sys.argv[1] == "dump":
    os.makedirs(sys.argv[2], exist_ok=True)
    for fam in (sys.argv[3].split(",") if len(sys.argv) > 3 else FAMILIES):
      dump_family(fam, sys.argv[2])
  else:
    sys.exit(0 if compare(sys.argv[2], sys.argv[3]) else 1)
