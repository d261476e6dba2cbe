"""python -m vgg_jax: the vgg-jax command (vgg_jax/commands.py)."""

from vgg_jax import commands

if __name__ == "__main__":
  commands.main()
