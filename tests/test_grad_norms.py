"""The step-1 gradient-norm diagnostic (mae_jax.evaluate.grad_norms)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mae_jax.data import convert
from mae_jax.evaluate import grad_norms
from mae_jax.models import mae as mae_lib
from mae_jax.tasks import mae as mae_task
from mae_jax.tasks.targets import pixels
import data_fixtures
from helpers import write_small_e2e


def test_init_grad_norm_matches_optax_and_names_the_largest_entry():
  model = mae_lib.MAE(variant="tiny", patch=5, channels=3)
  x = jnp.asarray(data_fixtures.sparse_images(2, 25, 25, 3))
  norm, where, entry = grad_norms.init_grad_norm(model, x)
  params = model.init({"params": jax.random.key(0), "masking": jax.random.key(1)}, x[:1])["params"]
  grads = jax.jit(jax.grad(lambda p: mae_task.objective(  # the MAE task's loss (jitted: an
      pixels.Targets(5), model.apply({"params": p}, x, rngs={"masking": jax.random.key(2)}),
      x)))(params)  # op-by-op ViT gradient took ~30 s of the suite)
  flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)]).astype(np.float64)
  np.testing.assert_allclose(norm, np.sqrt((flat ** 2).sum()), rtol=1e-5)
  np.testing.assert_allclose(entry, np.abs(flat).max(), rtol=1e-6)
  assert where.startswith("['") and float(optax.tree.norm(grads)) > 0


def test_cli_prints_one_line_per_model_and_rejects_unknown_models(tmp_path, capsys, monkeypatch):
  write_small_e2e(tmp_path / "small.h5", n=(16, 4, 4))
  convert.convert([str(tmp_path / "small.h5")], str(tmp_path / "tfds"))
  grad_norms.main(["--data", str(tmp_path / "tfds"), "--models", "mae", "--batch", "2",
                   "--steps", "2"])
  out = capsys.readouterr().out
  lines = [l for l in out.splitlines() if "step-1 grad norm" in l]
  assert len(lines) == 1 and lines[0].split()[:2] == ["mae", "tiny"] and "2 AdamW steps" in lines[0]
  # --conv-ln-eps reaches ConvMAE's conv stages (the sweep in docs/models.md)
  from mae_jax.models.hybrids import convmae
  monkeypatch.setattr(convmae, "CONVMAE_VARIANTS", dict(convmae.CONVMAE_VARIANTS))  # build adds to it
  for variant, eps in (("tiny", 1e-6), ("tiny", 0.1), ("tiny/5", 0.1)):
    assert grad_norms.build("convmae", variant, 5, 3, eps).decode_size()[0].conv_ln_eps == eps
  with pytest.raises(ValueError, match="unknown model 'vit'"):
    grad_norms.main(["--data", str(tmp_path / "tfds"), "--models", "vit"])
