r"""configs/small_images.py measured: SimCLR on a folder of a few thousand PNGs
against a logistic regression on the raw pixels of the same images.

  python benchmarks/small_images.py                     # the config's own schedule
  python benchmarks/small_images.py --steps 40 --out /tmp/cj_small_check   # a short check

1. A flat folder, OUT/images/<class>/<n>.png: --per-class PNGs of each class of
   the embedded Fashion-MNIST subset's train split (500: 5,000 in all). The
   folder source carves the test split out of it (--test-images, 2,000: 200 per
   class, class-balanced, its fixed seed) and leaves the rest (3,000) to
   train on; the val carve is 10% of those, the share configs/small_images.py
   carves when it is given the folder (its argument counts the default 10%
   test carve, so the run passes both sizes).
2. `python -m contrastive_jax.pretrain --config=configs/small_images.py:OUT/images`,
   for the config's schedule or --steps.
3. `python -m contrastive_jax.eval --config=configs/eval.py`: the linear probe
   (learning rate x weight decay x feature standardisation chosen on val,
   retrained on train + val, reported on test) and kNN.
4. The baseline: scikit-learn's LogisticRegression on the raw pixels the folder
   source loads (the same images at the config's size, the same train / val /
   test), standardised on train, C chosen on val, refit on train + val,
   reported on test.

Writes OUT/small_images.json (figures, settings, versions, commit) and prints
a table. The pretraining is timed: run it with the CPU to itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))  # provenance.py, also run by path
import provenance  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG = os.path.join(REPO, 'configs', 'small_images.py')
FASHION_CLASSES = ('t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt',
                   'sneaker', 'bag', 'ankle-boot')
LOGREG_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
PROBE_FEATURE_NORMS = 'none,standardize'  # chosen on val, as the baseline standardises


def write_folder(directory: str, per_class: int) -> int:
  """`per_class` PNGs per class from the embedded train split, in the flat layout."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from contrastive_jax.data import arrays, embedded  # pylint: disable=g-import-not-at-top
  source = embedded.load_embedded('train')
  positions = arrays.select_label_subset(source.labels, per_class=per_class, seed=0)
  for n, pos in enumerate(positions):
    class_dir = os.path.join(directory, FASHION_CLASSES[int(source.labels[pos])])
    os.makedirs(class_dir, exist_ok=True)
    Image.fromarray(source.images[pos, :, :, 0], 'L').save(os.path.join(class_dir, f'{n:05d}.png'))
  return len(positions)


def _run(args: list[str], log_path: str) -> float:
  """`python -m args...` in the repository; its wall time in seconds."""
  env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
  t0 = time.monotonic()
  with open(log_path, 'w') as log:
    code = subprocess.call([sys.executable, '-m', *args], cwd=REPO, env=env, stdout=log,
                           stderr=subprocess.STDOUT)
  if code:
    raise RuntimeError(f'{" ".join(args[:2])} failed (exit status {code}); see {log_path}')
  return time.monotonic() - t0


def logistic_regression_baseline(data_cfg) -> dict:
  """Raw-pixel logistic regression on the splits `data_cfg` (the run's config.data) gives."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  import threadpoolctl  # pylint: disable=g-import-not-at-top  # comes with scikit-learn
  from contrastive_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  splits = {w: pipeline.load_split(data_cfg, w) for w in ('train', 'val', 'test')}
  xy = {w: (s.images.reshape(s.num_examples, -1).astype(np.float64) / 255.0, s.labels)
        for w, s in splits.items()}

  def fit(x, y, c):
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x), y)
    return lambda z: model.predict(scaler.transform(z))

  # One BLAS thread: on two cores shared with other work, more threads make
  # each lbfgs iteration tens of times slower.
  with threadpoolctl.threadpool_limits(limits=1):
    val_acc = {}
    for c in LOGREG_CS:
      predict = fit(*xy['train'], c)
      val_acc[c] = float(np.mean(predict(xy['val'][0]) == xy['val'][1]))
    best = max(LOGREG_CS, key=lambda c: (val_acc[c], -c))  # ties: the stronger regularisation
    predict = fit(np.concatenate([xy['train'][0], xy['val'][0]]),
                  np.concatenate([xy['train'][1], xy['val'][1]]), best)
    test_acc = float(np.mean(predict(xy['test'][0]) == xy['test'][1]))
  return {'logreg_top1': test_acc,
          'logreg_val_top1': val_acc[best], 'logreg_C': best,
          'logreg_val_by_C': {str(c): a for c, a in val_acc.items()},
          **{f'{w}_examples': s.num_examples for w, s in splits.items()},
          'image_shape': list(splits['train'].image_shape)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--per-class', type=int, default=500,
                      help='PNGs per class in the folder (10 classes)')
  parser.add_argument('--test-images', type=int, default=2000,
                      help='the test carve (config.data.test_examples)')
  parser.add_argument('--steps', type=int, default=0,
                      help='pretraining steps; 0 = the config\'s schedule (num_epochs)')
  parser.add_argument('--out', default='/tmp/cj_small_images')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='pretrain config override, e.g. --set num_epochs=100')
  args = parser.parse_args()
  commit = provenance.git_commit()  # before the runs: the tree may change during them

  os.makedirs(args.out, exist_ok=True)
  images = os.path.join(args.out, 'images')
  if os.path.isdir(images):
    raise SystemExit(f'{images} exists: give a new --out (each run writes its own folder).')
  total = write_folder(images, args.per_class)
  train_images = total - args.test_images
  val_images = round(0.1 * train_images)  # the share configs/small_images.py carves
  data_overrides = [f'--config.data.test_examples={args.test_images}',
                    f'--config.data.val_examples={val_images}']
  overrides = data_overrides + [f'--config.{kv}' for kv in args.set]
  if args.steps:
    overrides.append(f'--config.total_steps={args.steps}')

  workdir = os.path.join(args.out, 'simclr')
  wall = _run(['contrastive_jax.pretrain', f'--config={CONFIG}:{images}',
               f'--workdir={workdir}', *overrides], workdir + '.log')
  evaldir = workdir + '_eval'
  _run(['contrastive_jax.eval', f'--config={REPO}/configs/eval.py', f'--workdir={evaldir}',
        f'--config.init_from={workdir}', '--config.plot=False',
        f'--config.linear.feature_norm={PROBE_FEATURE_NORMS}',
        f'--config.knn.feature_norm={PROBE_FEATURE_NORMS}'], evaldir + '.log')
  with open(os.path.join(evaldir, 'eval', 'results.json')) as f:
    probe = json.load(f)
  with open(os.path.join(workdir, 'config.json')) as f:
    run_config = json.load(f)

  import ml_collections  # pylint: disable=g-import-not-at-top
  baseline = logistic_regression_baseline(ml_collections.ConfigDict(run_config['data']))
  if baseline['test_examples'] != probe.get('test_examples', baseline['test_examples']):
    raise RuntimeError(f"The baseline's test split ({baseline['test_examples']}) is not the "
                       f"probe's ({probe.get('test_examples')}).")
  result = {
      'date': datetime.date.today().isoformat(), 'commit': commit,
      'machine': platform.processor() or platform.machine(), 'cpus': os.cpu_count(),
      'versions': _versions(), 'folder_images': total, 'steps': probe.get('step'),
      'pretrain_wall_s': wall, 'batch_size': run_config['batch_size'],
      'overrides': overrides,
      **{k: probe[k] for k in ('linear_top1', 'linear_val_top1', 'linear_feature_norm',
                               'knn_k20_top1', 'knn_k200_top1') if k in probe},
      **baseline}
  with open(os.path.join(args.out, 'small_images.json'), 'w') as f:
    json.dump(result, f, indent=1)
  print(_table(result))


def _versions() -> dict:
  import flax, jax, sklearn  # pylint: disable=g-import-not-at-top,multiple-imports
  return {'jax': jax.__version__, 'flax': flax.__version__, 'sklearn': sklearn.__version__,
          'python': platform.python_version()}


def _table(r: dict) -> str:
  n = r['test_examples']
  # One binomial standard error at the probe's accuracy, for reading the gap.
  se = 100 * np.sqrt(r['linear_top1'] * (1 - r['linear_top1']) / n)
  lines = [f"{r['folder_images']} PNGs: train {r['train_examples']}, val {r['val_examples']}, "
           f"test {n} (images {r['image_shape']}); pretraining {r['steps']} steps at batch "
           f"{r['batch_size']} in {r['pretrain_wall_s'] / 60:.1f} min (commit {r['commit']})",
           '', '| features | test top-1 | val top-1 | chosen |', '|---|---|---|---|',
           f"| SimCLR linear probe | {100 * r['linear_top1']:.2f}% (+-{se:.1f}) | "
           f"{100 * r['linear_val_top1']:.2f}% | feature_norm {r.get('linear_feature_norm')} |",
           f"| SimCLR kNN-20 | {100 * r.get('knn_k20_top1', float('nan')):.2f}% | - | - |",
           f"| raw pixels, logistic regression | {100 * r['logreg_top1']:.2f}% | "
           f"{100 * r['logreg_val_top1']:.2f}% | C {r['logreg_C']} |"]
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  main()
