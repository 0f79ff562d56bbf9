"""Makes contrastive_jax/data/embedded/fashion_mnist_subset.npz from the IDX files.

The subset is class-balanced: 1000 train examples per class (10k) and 200 test
examples per class (2k), drawn without replacement with a fixed seed and kept in
their original order. The arrays are a pure function of the IDX files and the
flags, so rerunning reproduces them exactly (the zip container's timestamps
differ; `--check` compares the arrays' SHA-256 with the file's).

  apt-get install dataset-fashion-mnist      # Debian/Ubuntu: the four IDX .gz files
  python launch/make_embedded_dataset.py     # writes the .npz, prints sizes + hash
  python launch/make_embedded_dataset.py --check   # verifies the shipped file
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import numpy as np

from contrastive_jax.data import sources

SEED = 20170825  # the day Fashion-MNIST was released; any fixed number works


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
  """Hash of names, dtypes, shapes and bytes: independent of the zip container."""
  digest = hashlib.sha256()
  for key in sorted(arrays):
    a = np.ascontiguousarray(arrays[key])
    digest.update(f'{key}:{a.dtype.str}:{a.shape};'.encode())
    digest.update(a.tobytes())
  return digest.hexdigest()


def make_subset(idx_dir: str, train_per_class: int, test_per_class: int,
                seed: int) -> dict[str, np.ndarray]:
  arrays = {}
  for split, per_class in (('train', train_per_class), ('test', test_per_class)):
    full = sources.load_idx(idx_dir, split)
    # Same rule as the library's class-balanced subsets, in original order.
    positions = sources.select_label_subset(full.labels, per_class=per_class, seed=seed)
    arrays[f'{split}_images'] = full.images[positions]          # uint8 [n, 28, 28, 1]
    arrays[f'{split}_labels'] = full.labels[positions].astype(np.uint8)
    arrays[f'{split}_source_index'] = positions.astype(np.int32)  # row in the IDX file
  return arrays


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--idx_dir', default='/usr/share/datasets/fashion-mnist')
  parser.add_argument('--out', default=sources.EMBEDDED_PATH)
  parser.add_argument('--train_per_class', type=int, default=1000)
  parser.add_argument('--test_per_class', type=int, default=200)
  parser.add_argument('--seed', type=int, default=SEED)
  parser.add_argument('--check', action='store_true',
                      help='recompute and compare with --out instead of writing')
  args = parser.parse_args(argv)

  arrays = make_subset(args.idx_dir, args.train_per_class, args.test_per_class, args.seed)
  digest = arrays_sha256(arrays)
  if args.check:
    with np.load(args.out) as npz:
      shipped = arrays_sha256({k: npz[k] for k in npz.files})
    ok = shipped == digest
    print(f'{args.out}: arrays sha256 {shipped} -> {"matches" if ok else "DIFFERS from"} '
          f'a fresh build ({digest}).')
    return 0 if ok else 1
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez_compressed(args.out, **arrays)
  for key, a in arrays.items():
    print(f'{key}: {a.dtype} {a.shape}')
  print(f'wrote {args.out}: {os.path.getsize(args.out) / 1e6:.2f} MB, arrays sha256 {digest}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
