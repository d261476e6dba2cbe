"""Images on disk, in either of the two layouts people have:

- class subfolders: root/cat/*.jpg, root/dog/*.jpg (optionally under
  root/train and root/test, which then give the splits);
- Kaggle dogs-vs-cats, flat: root/cat.123.jpg, root/dog.45.jpg.

Images are decoded with Pillow on a thread pool and resized to a common
size. An unreadable or corrupt file is skipped with a warning naming it,
and the run goes on.
"""

import collections
import concurrent.futures
import logging
import os
import re
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from vgg_jax.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_FLAT_NAME = re.compile(r"^([A-Za-z_]+)[._-]\d+\.[A-Za-z]+$")


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def list_files(root: str) -> Tuple[List[str], List[str], str]:
  """(paths, class name per path, layout) for one split directory."""
  if not os.path.exists(root):
    raise DataError(f"image folder {root} does not exist")
  if not os.path.isdir(root):
    raise DataError(f"image folder {root} is a file, not a directory of images")
  subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  paths, names = [], []
  for d in subdirs:
    for f in sorted(os.listdir(os.path.join(root, d))):
      if _is_image(f):
        paths.append(os.path.join(root, d, f))
        names.append(d)
  if paths:
    return paths, names, "class subfolders"
  for f in sorted(os.listdir(root)):
    match = _FLAT_NAME.match(f)
    if match and _is_image(f):
      paths.append(os.path.join(root, f))
      names.append(match.group(1).lower())
  return paths, names, "flat <class>.<n>.<ext> files"


def open_image(path: str):
  """PIL's Image.open, where an image past Pillow's pixel limit
  (Image.MAX_IMAGE_PIXELS, 89M; a decompression bomb, or a scan far too big
  to train on) raises instead of warning and then filling memory."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
  return Image.open(path)


# Pillow modes of more than 8 bits a channel: convert("RGB") clips them to
# 255 (a 16-bit scan becomes white), so they are refused, not damaged.
DEEP_MODES = {"I;16": "16-bit", "I;16L": "16-bit", "I;16B": "16-bit", "I;16N": "16-bit",
              "I": "32-bit integer", "F": "32-bit float"}


class DeepImageError(DataError):
  """An image of more than 8 bits per channel."""


def to_8bit(image, path: str, mode: str = "RGB"):
  """A PIL image as 8-bit `mode` (RGB or L), upright.

  EXIF orientation is applied; alpha is dropped (RGBA -> RGB), palettes are
  looked up, CMYK and other 8-bit modes are converted by Pillow. Images of
  more than 8 bits a channel (16-bit, 32-bit integer or float) raise
  DeepImageError naming the file and its mode: scaling them needs the
  data's real range, which only you know.
  """
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top
  if image.mode in DEEP_MODES:
    raise DeepImageError(
        f"{path} is a {DEEP_MODES[image.mode]} image (Pillow mode {image.mode}); vgg_jax reads "
        "8-bit images, and converting would clip it: scale it to 8 bits by its real range "
        "first (e.g. numpy: (x - lo) / (hi - lo) * 255 with your data's lo and hi)")
  return ImageOps.exif_transpose(image).convert(mode)


def _decode(path: str, size: int) -> Optional[np.ndarray]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with open_image(path) as image:
      image = to_8bit(image, path)
      if size:
        image = image.resize((size, size), Image.BILINEAR)
      return np.asarray(image, np.uint8)
  except DeepImageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Pillow raises many types for bad files (OSError, SyntaxError, ValueError...).
    logger.warning("skipping unreadable image %s: %s: %s", path, type(e).__name__, e)
    return None


def decode_all(paths: Sequence[str], size: int) -> Tuple[np.ndarray, np.ndarray]:
  """(uint8 images, indices of the paths that decoded); bad files are skipped."""
  with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
    decoded = list(pool.map(lambda p: _decode(p, size), paths))
  good = [i for i, x in enumerate(decoded) if x is not None]
  if len(good) < len(paths):
    logger.warning("skipped %d of %d images that could not be read", len(paths) - len(good),
                   len(paths))
  shapes = collections.Counter(decoded[i].shape for i in good)
  if len(shapes) > 1:
    raise DataError(f"images differ in size ({', '.join(map(str, list(shapes)[:3]))}, ...); "
                    "set dataset.image_size to resize them")
  if not good:
    raise DataError("no readable images")
  return np.stack([decoded[i] for i in good]), np.asarray(good)


def load(root: str, size: int) -> Tuple[Dict[str, Tuple[np.ndarray, np.ndarray]], Tuple[str, ...]]:
  """Returns ({split: (images, labels)}, class names); split is train and maybe test."""
  split_dirs = {s: os.path.join(root, s) for s in ("train", "test")
                if os.path.isdir(os.path.join(root, s))}
  if "train" not in split_dirs:
    split_dirs = {"train": root}
  listed = {s: list_files(d) for s, d in split_dirs.items()}
  classes = tuple(sorted(set(listed["train"][1])))
  if len(classes) < 2:
    raise DataError(f"image folder {split_dirs['train']} has {len(classes)} class(es) "
                    f"{list(classes)}; need at least 2 (layouts: <root>/<class>/*.jpg or "
                    "<root>/<class>.<n>.jpg)")
  index = {c: i for i, c in enumerate(classes)}
  splits = {}
  for split, (paths, names, layout) in listed.items():
    unknown = sorted(set(names) - set(classes))
    if unknown:
      raise DataError(f"{split_dirs[split]} has classes {unknown} that train does not")
    logger.info("%s: %d images in %d classes (%s)", split_dirs[split], len(paths),
                len(set(names)), layout)
    images, good = decode_all(paths, size)
    labels = np.asarray([index[names[i]] for i in good], np.int32)
    splits[split] = (images, labels)
  return splits, classes
