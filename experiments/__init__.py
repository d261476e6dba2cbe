"""The ablations of the lecture deck, one module each (vgg-jax <name> --help)."""
