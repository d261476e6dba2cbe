"""Model registry: a config's model.name -> a Flax module.

Every model is a pure linen module used through init/apply; the only mutable
collection is VGG's optional 'batch_stats'.
"""

import flax.linen as nn
import ml_collections

from vgg_jax import checks, kernels
from vgg_jax.models import components
from vgg_jax.models.heads import HEADS, Head, check_classes, get_head
from vgg_jax.models.mlp import MLP
from vgg_jax.models.vgg import VGG, VGG_STAGES, min_input_size

MODELS = ("mlp",) + tuple(VGG_STAGES)


def create_model(model_config: ml_collections.ConfigDict, num_outputs: int,
                 dtype: str = "float32", bn_axis_name=None) -> nn.Module:
  """Builds the module named by model_config.name."""
  name = model_config.name
  compute_dtype = components.DTYPES[dtype]
  if name == "mlp":
    return MLP(hidden_sizes=tuple(model_config.hidden_sizes), num_outputs=num_outputs,
               activation=model_config.activation, kernel_init=model_config.kernel_init,
               dropout_rate=model_config.dropout_rate,
               input_dropout_rate=model_config.input_dropout_rate, dtype=compute_dtype)
  if name in VGG_STAGES:
    cpu_kernels = kernels.conv_and_pool(model_config.conv_lowering)
    injected = {} if cpu_kernels is None else {"conv": cpu_kernels[0], "pool": cpu_kernels[1]}
    return VGG(stages=VGG_STAGES[name], num_outputs=num_outputs,
               classifier_sizes=tuple(model_config.classifier_sizes),
               dropout_rate=model_config.dropout_rate, batch_norm=model_config.batch_norm,
               width_multiplier=model_config.width_multiplier,
               activation=model_config.activation, kernel_init=model_config.kernel_init,
               dtype=compute_dtype, bn_axis_name=bn_axis_name,
               **injected)
  raise KeyError(name)


def required_input_size(model_config: ml_collections.ConfigDict) -> int:
  """Smallest image height/width the model accepts (1 for the MLP)."""
  if model_config.name in VGG_STAGES:
    return min_input_size(VGG_STAGES[model_config.name])
  return 1


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the model section, the head and the compute dtype (ConfigError)."""
  checks.choice(config, "dtype", components.DTYPES)
  checks.choice(config, "head", HEADS)
  checks.choice(config, "model.name", MODELS)
  checks.choice(config, "model.activation", components.ACTIVATIONS)
  checks.choice(config, "model.kernel_init", components.KERNEL_INITS)
  checks.number(config, "model.dropout_rate", 0, 1, high_open=True)
  checks.number(config, "model.input_dropout_rate", 0, 1, high_open=True)
  if config.model.name == "mlp":
    checks.positive_ints(config, "model.hidden_sizes", allow_empty=False)
    return
  checks.number(config, "model.width_multiplier", 0, low_open=True)
  kernels.validate(config)
  checks.positive_ints(config, "model.classifier_sizes", allow_empty=True)


__all__ = ["MODELS", "HEADS", "components", "Head", "check_classes", "get_head", "create_model", "required_input_size",
           "MLP", "VGG", "VGG_STAGES", "validate"]
