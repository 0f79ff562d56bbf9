"""`python -m contrastive_jax.interop` = `python -m contrastive_jax.export`; see cli.py."""

from contrastive_jax.interop import cli

if __name__ == '__main__':
  cli.main()
