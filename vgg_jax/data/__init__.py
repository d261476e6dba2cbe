"""The data seam: a config's dataset section -> an in-memory or streaming dataset.

Researchers name a dataset; its Source (registry.py) finds it wherever it is
(prepared TFDS data, IDX files such as Debian's dataset-fashion-mnist, an
image folder, a TFDS download, your own loader) and applies the host
transforms (transforms.py: class subset, resize, grey to RGB, held-out
splits). Normalization and augmentation happen later, inside the compiled
step (pipeline.py).
"""

from vgg_jax.data import registry, sources, tfds_source, transforms
from vgg_jax.data import user as user_lib
from vgg_jax.data.dataset import Dataset, DatasetInfo, Source, Split
from vgg_jax.data.registry import (DATASETS, NORMALIZATIONS, PIPELINES, SOURCES, image_shape,
                                   is_image, is_user, load, native_class_names, native_shape,
                                   num_classes, resolve_classes, source, use_streaming, validate)
from vgg_jax.data.user import register

__all__ = ["DATASETS", "Dataset", "DatasetInfo", "NORMALIZATIONS", "PIPELINES", "SOURCES",
           "Source", "Split", "image_shape", "is_image", "is_user", "load", "native_class_names",
           "native_shape", "num_classes", "register", "registry", "resolve_classes", "source",
           "sources", "tfds_source", "transforms", "use_streaming", "user_lib", "validate"]
