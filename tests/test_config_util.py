"""Config helpers: `:arg` parsing and `--config.x=y` overrides (ml_collections' parsing)."""

import os
import subprocess
import sys

import pytest

from mae_jax import config_util
from helpers import ROOT, load_config


def test_overrides_are_typed_and_unknown_fields_rejected():
  c = load_config()
  config_util.apply_overrides(c, ["--config.batch_size=16", "--config.model.mask_ratio=0.5",
                                  "--config.data.normalization=none",
                                  "--config.mesh=(('data', -1), ('fsdp', 2))"])
  assert c.batch_size == 16 and c.model.mask_ratio == 0.5 and c.data.normalization == "none"
  assert c.mesh == (("data", -1), ("fsdp", 2))
  with pytest.raises(ValueError, match=r"^--config.model.nope: unknown config field 'nope'$"):
    config_util.apply_overrides(c, ["--config.model.nope=1"])
  # a typo names the closest field
  with pytest.raises(ValueError, match=r"unknown config field 'maks_ratio' \(did you mean "
                                       r"'mask_ratio'\?\)"):
    config_util.apply_overrides(c, ["--config.lr=1", "--config.model.maks_ratio=0.5"])
  with pytest.raises(ValueError, match="--config.total_steps=1.5: invalid literal"):
    config_util.apply_overrides(c, ["--config.total_steps=1.5"])


def test_parse_arg_types_and_unknown_keys():
  assert config_util.parse_arg("variant=B,patch=16", variant="tiny", patch=5) == {
      "variant": "B", "patch": 16}
  with pytest.raises(ValueError, match="unknown config argument 'variantt'"):
    config_util.parse_arg("variantt=B", variant="tiny")


def test_configs_are_found_through_the_package():
  """configs/ ships as mae_jax.configs; a short name and a file path name the same config."""
  for name in config_util.CONFIG_NAMES:
    module = config_util.config_module(name)
    assert module.__name__ == f"mae_jax.configs.{name}"
    assert os.path.samefile(module.__file__, os.path.join(ROOT, "configs", f"{name}.py"))
  short = config_util.load_config("scratch:variant=tiny,tokens=sparse")
  path = config_util.load_config(os.path.join(ROOT, "configs", "scratch.py") +
                                 ":variant=tiny,tokens=sparse")
  assert short.to_dict() == path.to_dict()
  assert short.stage == "scratch" and short.model.tokens == "sparse" and short.model_load == ""


def test_bad_config_names_are_one_line_usage_errors(tmp_path):
  from mae_jax.errors import UsageError
  with pytest.raises(UsageError, match=r"no such config file 'configs/pretrainn.py'.*"
                     r"pretrain, probe, finetune, scratch, resnet"):
    config_util.load_config("configs/pretrainn.py:variant=tiny")
  with pytest.raises(UsageError, match=r"--config pretrain:varaint=tiny: unknown config "
                     r"argument 'varaint'"):
    config_util.load_config("pretrain:varaint=tiny")
  with pytest.raises(UsageError, match="no config named 'pretrainn'"):
    config_util.config_module("pretrainn")


def test_print_config_with_a_bad_config_fails_in_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  for arg, message in (("/nonexistent/x.py", "no such config file '/nonexistent/x.py'"),
                       ("pretrain:variant=tiny,patchh=4", "unknown config argument 'patchh'")):
    r = subprocess.run([sys.executable, "-m", "mae_jax.main", "--config", arg, "--print_config"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
  r = subprocess.run([sys.executable, "-m", "mae_jax.main", "--config", "probe:variant=tiny",
                      "--print_config"], capture_output=True, text=True, env=env, cwd=tmp_path,
                     timeout=120)
  assert r.returncode == 0 and "stage: probe" in r.stdout, r.stderr


def test_pyproject_lists_every_package_and_maps_configs():
  """pyproject lists the packages by hand (discovery cannot map configs/): a new
  subpackage must be added there, or the wheel would lack it."""
  import tomllib
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    st = tomllib.load(f)["tool"]["setuptools"]
  found = {os.path.relpath(d, ROOT).replace(os.sep, ".")
           for d, _, files in os.walk(os.path.join(ROOT, "mae_jax")) if "__init__.py" in files}
  assert set(st["packages"]) == found | {"mae_jax.configs"}
  assert st["package-dir"] == {"mae_jax.configs": "configs"}
