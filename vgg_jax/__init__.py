"""vgg_jax: the "deep learning installed in your head" chain, runnable in JAX.

Sigmoid -> ReLU, GD -> SGD -> Adam, dropout, and conv/pool up to VGG16, as
pure Flax modules, Optax chains and a jit-compiled train loop driven by
ml_collections configs. See README.md.
"""

__version__ = "0.1.0"
