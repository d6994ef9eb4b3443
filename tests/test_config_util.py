"""Config helpers: `:arg` parsing and `--config.x=y` overrides (ml_collections' parsing)."""

import pytest

from mae_jax import config_util
from helpers import load_config


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
