"""mae_jax: masked autoencoders in JAX/Flax for CMS End-to-End detector images."""

__version__ = "0.1.0"
