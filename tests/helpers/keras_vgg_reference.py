"""Writes a Keras VGG (random weights, built offline) and its logits for a test.

    KERAS_BACKEND=jax python tests/helpers/keras_vgg_reference.py OUT_DIR [vgg16|vgg19]

OUT_DIR gets legacy.h5 (the keras.applications HDF5 layout), k3.weights.h5
(Keras 3 save_weights) and reference.npz (uint8 RGB images and Keras's
pre-softmax outputs on Caffe-preprocessed input).
"""

import os
import sys

import h5py
import keras
import numpy as np
from keras.src.legacy.saving import legacy_h5_format


def main(out_dir, name="vgg16"):
  builder = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}[name]
  model = builder(weights=None, classifier_activation=None)
  images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
  preprocess = {"vgg16": keras.applications.vgg16.preprocess_input,
                "vgg19": keras.applications.vgg19.preprocess_input}[name]
  logits = np.asarray(model(preprocess(images.astype(np.float32)), training=False))
  with h5py.File(os.path.join(out_dir, "legacy.h5"), "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  model.save_weights(os.path.join(out_dir, "k3.weights.h5"))
  np.savez(os.path.join(out_dir, "reference.npz"), images=images, logits=logits)


if __name__ == "__main__":
  main(*sys.argv[1:])
