from mae_jax.protocol import cli

if __name__ == "__main__":
  cli()
