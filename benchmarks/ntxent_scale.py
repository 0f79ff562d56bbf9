"""NT-Xent loss + gradient at large global batches: dense vs blockwise.

  python benchmarks/ntxent_scale.py [--batches 256,1024,4096,16384,65536]
      [--block-size 1024] [--devices 8] [--dim 128] [--time-budget 5] [--out f.jsonl]
  python benchmarks/ntxent_scale.py --quick      # CI: 256 and 1024 only

Runs `losses.nt_xent` inside `jax.shard_map` over the 'data' axis of a mesh of
simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count, set
here before jax is imported), exactly as train.py calls it: every device
all-gathers the projections, holds its n = B / devices anchors (2n rows, both
views) and contrasts them with all 2B views.

  dense      block_size=0: per-device logits [2n, 2B] (O(n x B) memory).
  blockwise  block_size=K: a scan over candidate blocks with a running
             log-sum-exp and recomputation in the backward pass: O(n x K).
             When K >= 2B the loss takes the dense path (the row says so).

The function timed is jax.value_and_grad of the loss with respect to both
views' projections, metrics included (train.py's step returns them too).

Memory: from the compiled executable's memory_analysis(), which for an SPMD
program describes one device: temp (XLA's scratch buffers: logits and their
gradients live here), arguments, outputs, and peak = temp + arguments +
outputs - aliased. Every size is compiled; a size is run (median of --reps
calls) only if its predicted time (the previous size's time x (B/B_prev)^2)
is under --time-budget seconds and its whole-host memory (devices x peak) is
under --max-host-gib.
"""

from __future__ import annotations

import os
import sys


def _set_device_count(argv: list[str]) -> None:
  """Simulated CPU devices: must happen before jax is imported."""
  count = 8
  for i, a in enumerate(argv):
    if a == '--devices' and i + 1 < len(argv):
      count = int(argv[i + 1])
    elif a.startswith('--devices='):
      count = int(a.split('=', 1)[1])
  flags = os.environ.get('XLA_FLAGS', '')
  if '--xla_force_host_platform_device_count' not in flags:
    os.environ['XLA_FLAGS'] = (flags + f' --xla_force_host_platform_device_count={count}').strip()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')


if __name__ == '__main__':
  _set_device_count(sys.argv[1:])

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import datetime
import json
import math
import platform
import statistics
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from contrastive_jax import losses, parallel

GIB = 2.0 ** 30


def make_loss_and_grad(mesh, *, temperature: float, block_size: int):
  """jit(value_and_grad) of the sharded NT-Xent w.r.t. (z1, z2), metrics as aux."""
  axis = parallel.DATA_AXIS

  def per_device(z1, z2):
    return losses.nt_xent(z1, z2, temperature=temperature, axis_name=axis,
                          block_size=block_size)

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(axis), P(axis)),
                          out_specs=P())
  fn = jax.value_and_grad(sharded, argnums=(0, 1), has_aux=True)
  data = NamedSharding(mesh, P(axis))
  return jax.jit(fn, in_shardings=(data, data))


def memory_stats(compiled) -> dict[str, float]:
  """Per-device bytes from the compiled executable (nan where unavailable)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    m = None
  get = lambda name: float(getattr(m, name, math.nan)) if m is not None else math.nan
  stats = dict(temp=get('temp_size_in_bytes'), argument=get('argument_size_in_bytes'),
               output=get('output_size_in_bytes'), alias=get('alias_size_in_bytes'),
               generated_code=get('generated_code_size_in_bytes'))
  stats['peak'] = stats['temp'] + stats['argument'] + stats['output'] - (
      0.0 if math.isnan(stats['alias']) else stats['alias'])
  return stats


def _flops(compiled) -> float:
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    return float((cost or {}).get('flops', math.nan))
  except Exception:  # pylint: disable=broad-except
    return math.nan


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batches', default='256,1024,4096,16384,65536',
                 help='global batch sizes (images; 2 views each), comma-separated')
  p.add_argument('--block-size', type=int, default=1024,
                 help='blockwise: candidate columns per block')
  p.add_argument('--devices', type=int, default=8, help='simulated CPU devices')
  p.add_argument('--dim', type=int, default=128, help='projection dimension')
  p.add_argument('--temperature', type=float, default=0.1)
  p.add_argument('--reps', type=int, default=5, help='timed calls per size (median)')
  p.add_argument('--time-budget', type=float, default=5.0,
                 help='run a size only if its predicted time per call is below this (s)')
  p.add_argument('--max-host-gib', type=float, default=4.0,
                 help='run a size only if devices x per-device peak is below this (GiB)')
  p.add_argument('--note', default='', help='free text stored with the result')
  p.add_argument('--out', default='', help='append one JSON line with every number here')
  p.add_argument('--quick', action='store_true',
                 help='CI: batches 256 and 1024, block size 128, 2 reps')
  args = p.parse_args(argv)
  if args.quick:
    args.batches, args.block_size, args.reps = '256,1024', 128, 2
  args.batch_list = [int(b) for b in args.batches.split(',') if b]
  return args


def run(args: argparse.Namespace) -> dict[str, Any]:
  devices = jax.devices()
  if len(devices) != args.devices:
    raise SystemExit(f'expected {args.devices} devices, jax sees {len(devices)}: set '
                     f'XLA_FLAGS=--xla_force_host_platform_device_count={args.devices} '
                     'before jax is imported (this script does when run directly).')
  mesh = parallel.make_mesh(devices)
  data = NamedSharding(mesh, P(parallel.DATA_AXIS))
  rows = []
  last_time: dict[str, tuple[int, float]] = {}
  for batch in args.batch_list:
    if batch % args.devices:
      raise SystemExit(f'batch {batch} is not divisible by {args.devices} devices')
    n = batch // args.devices
    spec = jax.ShapeDtypeStruct((batch, args.dim), jnp.float32, sharding=data)
    for mode, block in (('dense', 0), ('blockwise', args.block_size)):
      fn = make_loss_and_grad(mesh, temperature=args.temperature, block_size=block)
      t0 = time.perf_counter()
      compiled = fn.lower(spec, spec).compile()
      compile_s = time.perf_counter() - t0
      mem = memory_stats(compiled)
      row = dict(batch=batch, per_device_anchors=2 * n, candidates=2 * batch, mode=mode,
                 block_size=block,
                 effective='dense' if (block == 0 or block >= 2 * batch) else 'blockwise',
                 compile_s=compile_s, flops_per_device=_flops(compiled),
                 logits_bytes_dense=2 * n * 2 * batch * 4.0,
                 mem=mem, time_s=math.nan, time_min_s=math.nan, skipped='')
      # Predict this size's time from the previous measured one (O(B^2) work).
      prev = last_time.get(mode)
      predicted = prev[1] * (batch / prev[0]) ** 2 if prev else 0.0
      host_gib = args.devices * mem['peak'] / GIB
      if predicted > args.time_budget:
        row['skipped'] = f'predicted {predicted:.0f} s/call > budget'
      elif host_gib > args.max_host_gib:
        row['skipped'] = f'needs {host_gib:.1f} GiB on the host'
      else:
        rng = np.random.default_rng(batch)
        z1 = jax.device_put(rng.standard_normal((batch, args.dim), np.float32), data)
        z2 = jax.device_put(rng.standard_normal((batch, args.dim), np.float32), data)
        jax.block_until_ready(compiled(z1, z2))  # warm-up
        times = []
        for _ in range(args.reps):
          t0 = time.perf_counter()
          (loss, _), grads = compiled(z1, z2)
          jax.block_until_ready(grads)
          times.append(time.perf_counter() - t0)
        row.update(time_s=statistics.median(times), time_min_s=min(times),
                   loss=float(loss))
        last_time[mode] = (batch, row['time_s'])
      rows.append(row)
  env = dict(
      date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      backend=jax.default_backend(), num_devices=len(devices), cpu_count=os.cpu_count(),
      loadavg=os.getloadavg()[0] if hasattr(os, 'getloadavg') else math.nan,
      python=platform.python_version(), jax=jax.__version__, numpy=np.__version__)
  return dict(kind='ntxent_scale', env=env, note=args.note,
              args={k: v for k, v in vars(args).items()}, rows=rows)


def _bytes(x: float) -> str:
  if math.isnan(x):
    return 'n/a'
  for unit, scale in (('GiB', GIB), ('MiB', 2.0 ** 20), ('KiB', 2.0 ** 10)):
    if x >= scale:
      return f'{x / scale:.1f} {unit}'
  return f'{x:.0f} B'


def format_row(r: dict[str, Any]) -> str:
  m = r['mem']
  mode = r['mode'] if r['mode'] == r['effective'] else f"{r['mode']} (= dense: block >= 2B)"
  timing = (f"{1e3 * r['time_s']:.1f}" if not math.isnan(r['time_s'])
            else f"not run ({r['skipped']})")
  block = r['block_size'] or '-'
  return (f"| {r['batch']} | {mode} | {block} | {r['per_device_anchors']} x "
          f"{r['candidates']} | {_bytes(m['temp'])} | {_bytes(m['peak'])} | "
          f"{_bytes(r['logits_bytes_dense'])} | {timing} | {r['compile_s']:.1f} |")


def format_table(result: dict[str, Any]) -> str:
  env, a = result['env'], result['args']
  lines = [
      f"# NT-Xent loss+grad (value_and_grad w.r.t. z1, z2; metrics included), "
      f"d={a['dim']}, T={a['temperature']}, {env['num_devices']} simulated CPU devices, "
      f"shard_map over 'data'",
      f"# {env['date']} | {env['cpu_count']} CPUs, load {env['loadavg']:.1f} | jax "
      f"{env['jax']} | memory per device from compiled.memory_analysis()",
  ]
  if result.get('note'):
    lines.append(f"# note: {result['note']}")
  lines += [
      '',
      '| global batch | mode | block | per-device logits (rows x cols) | temp / device | '
      'peak / device | dense logits / device | loss+grad ms (median) | compile s |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  lines += [format_row(r) for r in result['rows']]
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  result = run(args)
  print(format_table(result), flush=True)
  if args.out:
    with open(args.out, 'a', encoding='utf-8') as f:
      f.write(json.dumps(result, default=float) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
