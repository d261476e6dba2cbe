"""Output heads from the seed material; each one fixes its loss and metrics.

- value:    linear outputs, mean squared error to the one-hot target
            (the pre-softmax classic); prediction is the argmax.
- binary:   one sigmoid unit, binary cross-entropy; needs a 2-class task.
- category: softmax over the classes, cross-entropy.

Losses are per example and computed in float32 whatever the compute dtype.
"""

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from vgg_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Head:
  name: str
  num_outputs: Callable[[int], int]
  loss: Callable[[jax.Array, jax.Array], jax.Array]  # (logits, labels) -> [batch]
  predict: Callable[[jax.Array], jax.Array]  # logits -> integer class per example
  probabilities: Callable[[jax.Array], jax.Array]  # logits -> [batch, num_classes]


def _value_loss(outputs, labels):
  target = jax.nn.one_hot(labels, outputs.shape[-1], dtype=jnp.float32)
  return jnp.mean(jnp.square(outputs.astype(jnp.float32) - target), axis=-1)


def _binary_loss(logits, labels):
  return optax.sigmoid_binary_cross_entropy(logits[:, 0].astype(jnp.float32),
                                            labels.astype(jnp.float32))


def _binary_probabilities(logits):
  p = jax.nn.sigmoid(logits[:, 0].astype(jnp.float32))
  return jnp.stack([1.0 - p, p], axis=-1)


def _category_loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


HEADS = {
    "value": Head("value", lambda k: k, _value_loss,
                  lambda o: jnp.argmax(o, -1), lambda o: o.astype(jnp.float32)),
    "binary": Head("binary", lambda k: 1, _binary_loss,
                   lambda o: (o[:, 0] > 0).astype(jnp.int32), _binary_probabilities),
    "category": Head("category", lambda k: k, _category_loss,
                     lambda o: jnp.argmax(o, -1),
                     lambda o: jax.nn.softmax(o.astype(jnp.float32), -1)),
}


def get_head(name: str) -> Head:
  return HEADS[name]


def check_classes(head: str, dataset: str, num_classes: Optional[int]) -> None:
  """The binary head needs a 2-class task (num_classes None: not known yet)."""
  if head == "binary" and num_classes is not None and num_classes != 2:
    raise ConfigError("head", head, f"'binary' needs a 2-class task, but {dataset} has "
                      f"{num_classes} classes; set dataset.classes=(a, b) or use head=category")
