"""Make a plain ``tfds.load('fashion_mnist')`` (or mnist) work offline.

    apt-get install dataset-fashion-mnist
    vgg-jax prepare fashion_mnist --from /usr/share/datasets/fashion-mnist

The four IDX files are checked (magic number, sizes), copied into TFDS's
download cache under the names TFDS derives from each URL and its registered
checksum, with the .INFO file TFDS writes after a download, and then TFDS
builds the dataset as if it had downloaded them. Going through manual_dir
instead fails: Debian recompressed the .gz files, so their checksums differ
from the registered ones even though the IDX contents are identical.
"""

import argparse
import gzip
import os
import shutil
import sys

from vgg_jax.data import idx as idx_lib
from vgg_jax.data import tfds_source
from vgg_jax.errors import DataError

PREPARABLE = ("fashion_mnist", "mnist")


def _place(src: str, dest: str) -> None:
  """Copies src to dest, gzipping it if the user has it uncompressed."""
  tmp = dest + ".tmp"
  if src.endswith(".gz"):
    shutil.copyfile(src, tmp)
  else:
    with open(src, "rb") as f_in, gzip.open(tmp, "wb") as f_out:
      shutil.copyfileobj(f_in, f_out)
  os.replace(tmp, dest)


def prepare(name: str, source_dir: str, data_dir: str = "") -> str:
  """Fills TFDS's cache from IDX files and builds the dataset; returns data_dir."""
  if name not in PREPARABLE:
    raise DataError(f"prepare supports {', '.join(PREPARABLE)}, not {name!r}")
  files = idx_lib.find_files(source_dir)
  if not files:
    raise DataError(f"{source_dir} does not hold the four IDX files "
                    f"({', '.join(idx_lib.FILES.values())}, optionally .gz)")
  idx_lib.load_dir(source_dir)  # Magic numbers, sizes and counts, before TFDS sees them.

  _, tfds = tfds_source.import_tf()
  from etils import epath  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import resource  # pylint: disable=g-import-not-at-top
  b = tfds.builder(name, data_dir=data_dir or None)
  root = os.path.dirname(os.path.dirname(str(b.data_dir)))  # <root>/<name>/<version>
  download_dir = os.path.join(root, "downloads")
  os.makedirs(download_dir, exist_ok=True)
  by_name = {os.path.basename(p).replace(".gz", ""): p for p in files.values()}
  for url, url_info in type(b).url_infos.items():
    src = by_name[url_info.filename.replace(".gz", "")]
    dest = os.path.join(download_dir, resource.get_dl_fname(url, url_info.checksum))
    _place(src, dest)
    resource.write_info_file(url=url, path=epath.Path(dest), dataset_name=b.name,
                             original_fname=url_info.filename, url_info=url_info)
  b.download_and_prepare(download_dir=download_dir)
  counts = {s: b.info.splits[s].num_examples for s in ("train", "test")}
  print(f"prepared {name} in {root}: {counts['train']} train, {counts['test']} test examples; "
        f"tfds.load({name!r}{', data_dir=' + repr(data_dir) if data_dir else ''}) now works "
        "offline")
  return root


def main(argv=None, prog="python -m vgg_jax.data.prepare"):
  parser = argparse.ArgumentParser(prog=prog,
                                   description=__doc__.splitlines()[0])
  parser.add_argument("name", help="dataset: " + ", ".join(PREPARABLE))
  parser.add_argument("--from", dest="source_dir", required=True,
                      help="directory with the four IDX files (.gz or not)")
  parser.add_argument("--data_dir", default="", help="TFDS data_dir (default: TFDS's own)")
  args = parser.parse_args(argv)
  try:
    prepare(args.name, args.source_dir, args.data_dir)
  except DataError as e:
    print(f"vgg_jax: {e}", file=sys.stderr)
    sys.exit(2)


def run():
  main(sys.argv[1:], prog=sys.argv[0])


if __name__ == "__main__":
  main()
