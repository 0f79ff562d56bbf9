r"""Semi-supervised Fashion-MNIST: fine-tuning a SimCLR encoder vs the same network from scratch.

  python benchmarks/semi_supervised.py --out /tmp/ssl --pretrain-steps 6000 \
      --pretrain-set batch_size=512 --jobs 8                            # the measured table
  python benchmarks/semi_supervised.py --out /tmp/ssl --pretrain-dir D   # reuse a pretraining run
  python benchmarks/semi_supervised.py --quick --out /tmp/ssl_quick      # CI: embedded data, tiny

1. Pretrain (unless --pretrain-dir is given) configs/fashion_mnist.py on the
   full Fashion-MNIST from the offline IDX files, --pretrain-steps steps, in
   chunks of --chunk-steps (config.stop_at_step: each process stays short on a
   shared CPU; the schedule is the one of the whole run).
2. For each label fraction (--fractions; of train minus the pretraining run's
   val carve) and each arm, fine-tune with configs/finetune_v1.py over the
   grid --lrs x --blocks (base LR x B/256, config.fine_tune_after_block):
     pretrained  init_from the pretraining run
     scratch     model_from the pretraining run: the same network, random weights
   Every run of a fraction uses the same class-balanced label subset (same
   label_seed; checked: the label_subset.json files are equal), the same steps
   and batch, the same crop + flip augmentation (crop_area_min from the
   pretraining config) and the same val carve as pretraining. Each arm gets the
   grid point with the best val top-1 (the baseline is tuned exactly as much as
   the pretrained network); the table reports that run's test top-1.
3. Writes OUT/semi_supervised.json (every run, its command and wall time) and
   prints the markdown table; benchmarks/semi_supervised.md holds a measured one.

Every run is a subprocess, as a user would run it; wall times include start-up
and compilation.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ('pretrained', 'scratch')


def _run(args: list[str], log_path: str, timeout_s: float = 0.0) -> float:
  """Runs `python -m args...` in the repo; returns its wall time in seconds.

  With timeout_s, the run gets SIGTERM after that long: the binaries then write a
  checkpoint and exit 0, so what was trained so far is kept and used.
  """
  # Several runs may share one accelerator (--jobs): none may grab most of its
  # memory up front, as JAX does by default.
  env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_PYTHON_CLIENT_PREALLOCATE='false')
  started = time.monotonic()
  with open(log_path, 'w') as log:
    proc = subprocess.Popen([sys.executable, '-m', *args], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
      returncode = proc.wait(timeout=timeout_s or None)
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGTERM)
      returncode = proc.wait()
  if returncode:
    raise RuntimeError(f'{" ".join(args[:3])} failed (exit {returncode}); see {log_path}')
  return time.monotonic() - started


def _read_json(path: str):
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def pretrain(args) -> dict:
  """Pretrains (or reads) the encoder; returns what was run and its probe accuracy."""
  if args.pretrain_dir:
    info = {'workdir': args.pretrain_dir, 'reused': True}
  else:
    workdir = os.path.join(args.out, 'pretrain')
    if args.quick:
      config, overrides = f'{REPO}/configs/smoke.py:tiny', ['--config.summary_images=0']
      chunks = [0]
    else:
      config = f'{REPO}/configs/fashion_mnist.py'
      overrides = [f'--config.total_steps={args.pretrain_steps}',
                   *[f'--config.{kv}' for kv in args.pretrain_set]]
      chunk = args.chunk_steps or args.pretrain_steps
      chunks = list(range(chunk, args.pretrain_steps, chunk)) + [0]
    info = {'workdir': workdir, 'commands': [], 'chunk_seconds': []}
    for stop in chunks:
      command = ['contrastive_jax.pretrain', f'--config={config}', f'--workdir={workdir}',
                 *overrides] + ([f'--config.stop_at_step={stop}'] if stop else [])
      info['commands'].append('python -m ' + ' '.join(command))
      info['chunk_seconds'].append(_run(command, f'{workdir}_{stop or "end"}.log',
                                        args.pretrain_timeout_s))
      print(f'pretraining chunk to step {stop or "end"}: {info["chunk_seconds"][-1]:.0f} s',
            flush=True)
    info['wall_seconds'] = sum(info['chunk_seconds'])
  cfg = _read_json(os.path.join(info['workdir'], 'config.json'))
  steps_done = [r['step'] for r in _metrics(info['workdir']) if 'loss' in r]
  info.update(total_steps=cfg.get('total_steps'), batch_size=cfg.get('batch_size'),
              last_logged_step=max(steps_done, default=0),
              val_examples=cfg['data']['val_examples'], data_source=cfg['data']['source'],
              idx_dir=cfg['data'].get('idx_dir', ''),
              image_size=cfg['data'].get('image_size', 0),
              crop_area_min=cfg['augment']['crop_area_min'])
  results = os.path.join(info['workdir'], 'pretrain_results.json')
  if os.path.exists(results):
    info['probe'] = {k: v for k, v in _read_json(results).items() if k.endswith('probe_acc')}
  return info


def finetune(args, pre: dict, fraction: float, arm: str, lr: float, block: int) -> dict:
  name = f'ft_{fraction:g}_{arm}_lr{lr:g}_block{block}'
  workdir = os.path.join(args.out, name)
  preset = {0.01: '1pct', 0.1: '10pct', 1.0: '100pct'}.get(fraction, '10pct')
  overrides = [f'--config.label_fraction={fraction}', f'--config.optim.learning_rate={lr}',
               f'--config.fine_tune_after_block={block}', f'--config.batch_size={args.batch_size}',
               f'--config.seed={args.seed}', '--config.log_every_steps=10',
               f'--config.data.source={pre["data_source"]}',
               f'--config.data.val_examples={pre["val_examples"]}',
               f'--config.data.image_size={pre["image_size"]}',
               f'--config.augment.crop_area_min={pre["crop_area_min"]}']
  if pre['data_source'] == 'idx':
    overrides.append(f'--config.data.idx_dir={pre["idx_dir"]}')
  if args.epochs:
    overrides.append(f'--config.num_epochs={args.epochs}')
  if args.quick:
    overrides.append('--config.total_steps=4')
  if arm == 'pretrained':
    overrides.append(f'--config.init_from={pre["workdir"]}')
  else:
    overrides += ['--config.init_from=', f'--config.model_from={pre["workdir"]}']
  command = ['contrastive_jax.finetune', f'--config={REPO}/configs/finetune_v1.py:{preset}',
             f'--workdir={workdir}', *overrides]
  seconds = _run(command, workdir + '.log')
  results = _read_json(os.path.join(workdir, 'finetune_results.json'))
  return {'fraction': fraction, 'arm': arm, 'lr': lr, 'block': block, 'workdir': workdir,
          'command': 'python -m ' + ' '.join(command), 'wall_seconds': seconds,
          'val_top1': results.get('val_top1'), 'test_top1': results['test_top1'],
          'steps': results['step'], 'label_examples': results['label_examples'],
          'subset': _read_json(os.path.join(workdir, 'label_subset.json'))}


def _pct(x) -> str:
  return '-' if x is None else f'{x:.2%}'


def best_runs(runs: list[dict], fraction: float) -> dict[str, dict]:
  """Per arm, the run with the best val top-1 (ties: the smaller LR)."""
  return {arm: max((r for r in runs if r['fraction'] == fraction and r['arm'] == arm),
                   key=lambda r: (r['val_top1'] or 0.0, -r['lr']))
          for arm in ARMS}


def table(runs: list[dict], fractions: list[float]) -> str:
  lines = ['| labels | labelled images | steps | pretrained: test top-1 | scratch: test top-1 '
           '| gain (points) | chosen on val (LR, fine_tune_after_block) | wall time per run |',
           '|---|---|---|---|---|---|---|---|']
  for fraction in fractions:
    best = best_runs(runs, fraction)
    p, s = best['pretrained'], best['scratch']
    lines.append(
        f'| {fraction:.0%} | {p["label_examples"]} | {p["steps"]} | {p["test_top1"]:.2%} | '
        f'{s["test_top1"]:.2%} | {100 * (p["test_top1"] - s["test_top1"]):+.1f} | '
        f'pretrained ({p["lr"]:g}, {p["block"]}), scratch ({s["lr"]:g}, {s["block"]}) | '
        f'{p["wall_seconds"]:.0f} s / {s["wall_seconds"]:.0f} s |')
  return '\n'.join(lines)


def grid_table(runs: list[dict]) -> str:
  lines = ['| labels | arm | LR | fine_tune_after_block | val top-1 | test top-1 | wall |',
           '|---|---|---|---|---|---|---|']
  for r in runs:
    lines.append(f'| {r["fraction"]:.0%} | {r["arm"]} | {r["lr"]:g} | {r["block"]} | '
                 f'{_pct(r["val_top1"])} | {_pct(r["test_top1"])} | {r["wall_seconds"]:.0f} s |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='/tmp/semi_supervised')
  parser.add_argument('--pretrain-dir', default='', help='reuse this pretraining workdir')
  parser.add_argument('--pretrain-steps', type=int, default=1600)
  parser.add_argument('--chunk-steps', type=int, default=800,
                      help='pretrain in processes of this many steps (0 = one process)')
  parser.add_argument('--pretrain-set', action='append', default=[], metavar='KEY=VALUE',
                      help='pretraining config override, e.g. --pretrain-set batch_size=512')
  parser.add_argument('--pretrain-timeout-s', type=float, default=0.0,
                      help='SIGTERM each pretraining process after this long: it '
                      'checkpoints, and fine-tuning starts from there (0 = no limit)')
  parser.add_argument('--jobs', type=int, default=1,
                      help='fine-tuning runs at a time (an accelerator or many cores)')
  parser.add_argument('--fractions', default='0.01,0.1')
  parser.add_argument('--lrs', default=None,
                      help='base LRs (x B/256), per arm; default 0.05,0.2,0.8,1.6 (--quick: 0.2)')
  parser.add_argument('--blocks', default='-1',
                      help='config.fine_tune_after_block values, per arm')
  parser.add_argument('--batch-size', type=int, default=256)
  parser.add_argument('--epochs', type=float, default=0,
                      help='override the preset epochs (60 for 1%%, 30 for 10%%)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--quick', action='store_true', help='CI: embedded data, tiny runs')
  args = parser.parse_args()
  if args.quick:
    args.batch_size, args.blocks, args.fractions = 32, '-1', '0.1'
  args.lrs = args.lrs or ('0.2' if args.quick else '0.05,0.2,0.8,1.6')
  os.makedirs(args.out, exist_ok=True)
  fractions = [float(f) for f in args.fractions.split(',')]
  lrs = [float(x) for x in args.lrs.split(',')]
  blocks = [int(x) for x in args.blocks.split(',')]

  pre = pretrain(args)
  grid = [(fraction, arm, lr, block) for fraction in fractions for block in blocks
          for lr in lrs for arm in ARMS]

  def one(point):
    run = finetune(args, pre, *point)
    print(f'{run["fraction"]:.0%} {run["arm"]:10s} lr {run["lr"]:g} block {run["block"]:2d}: '
          f'val {_pct(run["val_top1"])} test {_pct(run["test_top1"])} ({run["steps"]} steps, '
          f'{run["wall_seconds"]:.0f} s)', flush=True)
    return run
  with concurrent.futures.ThreadPoolExecutor(max(args.jobs, 1)) as pool:
    runs = list(pool.map(one, grid))
  for fraction in fractions:
    if len({json.dumps(r['subset']) for r in runs if r['fraction'] == fraction}) != 1:
      raise RuntimeError(f'The runs at {fraction:.0%} trained on different label subsets.')
  for r in runs:
    r.pop('subset')
  report = {'pretrain': pre, 'runs': runs, 'machine': platform.platform(),
            'cpus': os.cpu_count(), 'date': time.strftime('%Y-%m-%d %H:%M'),
            'best': {f'{f:g}': best_runs(runs, f) for f in fractions}}
  with open(os.path.join(args.out, 'semi_supervised.json'), 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=2)
  print()
  print(table(runs, fractions))
  print()
  print(grid_table(runs))


if __name__ == '__main__':
  main()
