r"""Small batches with a memory vs SimCLR's large batch, at one wall-clock budget.

  python benchmarks/memory_methods.py --budget-minutes 20 --out /tmp/cj_memory
  python benchmarks/memory_methods.py --budget-minutes 20 --only simclr64_memory,moco
  python benchmarks/memory_methods.py --quick --budget-minutes 0.3   # embedded data, tiny net

The five recipes of configs/fashion_mnist_memory.py on the full Fashion-MNIST
(configs/fashion_mnist.py's data, encoder and optimizer; IDX files of Debian's
`dataset-fashion-mnist` in /usr/share/datasets/fashion-mnist), each given the
same budget by benchmarks/quality.py's protocol, whose functions run it: a
calibration run measures the recipe's own steps/s and fixed cost, the
schedule is sized so pretraining (compilation included) ends at the budget,
SIGTERM stops it there if it runs late, then the eval binary measures the
linear probe (LR / weight decay / feature norm chosen on the validation carve)
and kNN-20 / kNN-200 test accuracy on frozen h. The question it answers: does
a batch-64 method with a memory of negatives (SimCLR v2's memory, MoCo v2)
come within 0.5 points of SimCLR at batch 512 in the same time?

Writes OUT/memory_methods.json, OUT/memory_methods.md (the table, each row
with the command that reproduces its recipe) and prints the table.
--quick runs the same recipes shrunk (embedded 10k-image subset, 8-wide
encoder at 16 px, configs/eval.py:tiny) so the whole script is checked end to
end in minutes; its accuracies mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import quality  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = quality.REPO
CONFIG = os.path.join(REPO, 'configs', 'fashion_mnist_memory.py')

# (variant of configs/fashion_mnist_memory.py, row name)
VARIANTS = (
    ('simclr512', 'SimCLR, batch 512'),
    ('simclr64', 'SimCLR, batch 64'),
    ('simclr64_memory', 'SimCLR, batch 64 + memory 4096'),
    ('moco', 'MoCo v2, batch 64, queue 4096'),
    ('byol', 'BYOL, batch 256'),
)

# --quick: the recipes on the embedded subset with a tiny encoder (seconds a step).
QUICK_OVERRIDES = [
    '--config.data.source=embedded', '--config.data.val_examples=1000',
    '--config.data.image_size=16', '--config.model.resnet.base_width=8',
    '--config.model.resnet.pool=avg', '--config.model.proj_hidden_dim=32',
    '--config.model.proj_dim=16', '--config.summary_images=0',
]


def run_variant(variant: str, minutes: float, out: str, overrides: list[str],
                eval_arg: str, calibration_steps: int) -> dict:
  """Calibrates, pretrains for the budget and evaluates one recipe (quality.py's
  protocol); returns its row."""
  config = f'{CONFIG}:{variant}'
  rate, fixed_s = quality.calibrate(config, os.path.join(out, f'calib_{variant}'), overrides,
                                    steps=calibration_steps)
  total = quality.budget_steps(minutes, rate, fixed_s)
  deadline = None
  if minutes * 60 - quality.STOP_SECONDS > fixed_s:
    deadline = minutes * 60 - quality.STOP_SECONDS
  workdir = os.path.join(out, variant)
  wall = quality._pretrain(config, workdir,  # pylint: disable=protected-access
                           overrides + [f'--config.total_steps={total}'], deadline)
  result = quality._evaluate(workdir, eval_arg)  # pylint: disable=protected-access
  command = (f'python -m contrastive_jax.pretrain --config=configs/fashion_mnist_memory.py:'
             f'{variant} --workdir=/tmp/{variant} ' + ' '.join(
                 overrides + [f'--config.total_steps={total}']))
  return {'variant': variant, 'budget_minutes': minutes, 'steps': result['step'],
          'scheduled_steps': total, 'steps_per_s': rate, 'fixed_s': fixed_s,
          'pretrain_wall_s': wall, 'command': command,
          **quality._pick(result)}  # pylint: disable=protected-access


def table(rows: list[dict]) -> str:
  fmt = lambda v: f'{100 * v:.2f}%' if isinstance(v, float) else '-'
  lines = ['| run | steps | pretrain wall | linear probe | (its val) | kNN-20 | kNN-200 |',
           '|---|---|---|---|---|---|---|']
  for r in rows:
    steps = r['steps'] if r['steps'] == r['scheduled_steps'] else (
        f"{r['steps']} of {r['scheduled_steps']}")
    lines.append(f"| {r['name']} | {steps} | {r['pretrain_wall_s'] / 60:.1f} min | "
                 f"{fmt(r.get('linear_top1'))} | {fmt(r.get('linear_val_top1'))} | "
                 f"{fmt(r.get('knn_k20_top1'))} | {fmt(r.get('knn_k200_top1'))} |")
  lines.append('')
  lines.append('Commands (the schedule length each run was given):')
  lines.append('')
  lines += [f'    {r["command"]}' for r in rows]
  return '\n'.join(lines) + '\n'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--budget-minutes', type=float, default=20.0)
  parser.add_argument('--out', default='/tmp/cj_memory')
  parser.add_argument('--only', default='', help='comma-separated variants of '
                      f'configs/fashion_mnist_memory.py ({", ".join(v for v, _ in VARIANTS)})')
  parser.add_argument('--quick', action='store_true',
                      help='embedded data and a tiny encoder: checks the script end to end')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='pretrain config override for every variant')
  args = parser.parse_args()
  commit = quality.provenance.git_commit()  # before the runs: the tree may change during them

  chosen = [v for v in args.only.split(',') if v] or [v for v, _ in VARIANTS]
  names = dict(VARIANTS)
  unknown = [v for v in chosen if v not in names]
  if unknown:
    parser.error(f'unknown variants {unknown}; choose from {list(names)}')
  overrides = (QUICK_OVERRIDES if args.quick else []) + [f'--config.{kv}' for kv in args.set]
  eval_arg = ':tiny' if args.quick else ''
  calibration_steps = 8 if args.quick else quality.CALIBRATION_STEPS
  os.makedirs(args.out, exist_ok=True)

  rows = []
  for variant in chosen:
    row = run_variant(variant, args.budget_minutes, args.out, overrides, eval_arg,
                      calibration_steps)
    rows.append({'name': names[variant], **row})
    print(json.dumps(rows[-1]), flush=True)

  meta = {'date': datetime.date.today().isoformat(), 'machine': platform.processor() or
          platform.machine(), 'cpus': os.cpu_count(), 'budget_minutes': args.budget_minutes,
          'quick': args.quick, 'versions': quality._versions(),  # pylint: disable=protected-access
          'commit': commit}
  with open(os.path.join(args.out, 'memory_methods.json'), 'w') as f:
    json.dump({'meta': meta, 'rows': rows}, f, indent=1)
  text = table(rows)
  with open(os.path.join(args.out, 'memory_methods.md'), 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  main()
