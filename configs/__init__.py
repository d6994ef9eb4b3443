"""The experiment configs, one per file with `get_config(arg)`: pretrain, probe, finetune,
scratch, resnet. Kept here at the top of the repository and installed as `mae_jax.configs`
(pyproject.toml); code finds them through `mae_jax.config_util.config_module(name)`."""
