"""Where a jitted function's time goes: a JAX profiler trace, summed per kernel.

  python benchmarks/trace_summary.py TRACE_DIR [--top 25]

TRACE_DIR is what `jax.profiler.trace(TRACE_DIR, create_perfetto_trace=True)`
wrote (the newest perfetto_trace.json.gz under it is read). Device time is
summed per kernel name over the device's streams (GPU: '/device:GPU:N'
processes; cuBLAS/cuDNN kernels and XLA fusions by name). A CPU trace has no
device process: XLA:CPU's own threads (tf_XLA*) stand in, so the same table
works on a laptop. No TensorBoard or xprof needed; the file is plain JSON.
Used by throughput.py --profile-augment.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
from typing import Any


def latest_trace(trace_dir: str) -> str:
  """The newest perfetto_trace.json.gz under trace_dir."""
  found = glob.glob(os.path.join(trace_dir, '**', 'perfetto_trace.json.gz'), recursive=True)
  if not found:
    raise FileNotFoundError(
        f'no perfetto_trace.json.gz under {trace_dir!r}: trace with '
        'jax.profiler.trace(dir, create_perfetto_trace=True).')
  return max(found, key=os.path.getmtime)


def summarise(path: str, top: int = 25) -> dict[str, Any]:
  """{'source': which threads, 'total_us', 'kernels': [{name, us, calls, share}]}.

  Kernels are the complete ('X') events on device processes, or on XLA:CPU
  worker threads when there are none; nested events on one thread would be
  counted twice, which device streams do not have.
  """
  with gzip.open(path, 'rt') as f:
    data = json.load(f)
  events = data['traceEvents'] if isinstance(data, dict) else data
  procs = {e['pid']: e['args']['name'] for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  threads = {(e['pid'], e['tid']): e['args']['name'] for e in events
             if e.get('ph') == 'M' and e.get('name') == 'thread_name'}
  device_pids = {pid for pid, name in procs.items() if name.startswith('/device:')}
  if device_pids:
    source = ', '.join(sorted(procs[p] for p in device_pids))
    keep = lambda e: e['pid'] in device_pids
  else:
    source = 'XLA:CPU threads (no device process in the trace)'
    # ThunkExecutor events enclose the kernels they run: not kernels themselves.
    keep = lambda e: (threads.get((e['pid'], e['tid']), '').startswith('tf_XLA')
                      and not e['name'].startswith('ThunkExecutor'))
  time_us: dict[str, float] = collections.Counter()
  calls: dict[str, int] = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and keep(e):
      time_us[e['name']] += float(e.get('dur', 0.0))
      calls[e['name']] += 1
  total = sum(time_us.values())
  kernels = [dict(name=name, us=us, calls=calls[name], share=us / total if total else 0.0)
             for name, us in sorted(time_us.items(), key=lambda kv: -kv[1])[:top]]
  return dict(trace=path, source=source, total_us=total, kernels=kernels)


def format_summary(summary: dict[str, Any], per: int = 1) -> str:
  """A table; per = calls traced, to print time per call."""
  lines = [f"device time by kernel ({summary['source']}), per call of {per} traced:",
           f"{'us/call':>10} {'share':>6} {'launches':>8}  kernel"]
  for k in summary['kernels']:
    lines.append(f"{k['us'] / per:10.1f} {k['share']:6.1%} {k['calls'] / per:8.1f}  "
                 f"{k['name'][:110]}")
  lines.append(f"{summary['total_us'] / per:10.1f} total (all kernels)")
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('trace_dir')
  parser.add_argument('--top', type=int, default=25)
  parser.add_argument('--per', type=int, default=1, help='calls in the trace')
  args = parser.parse_args()
  print(format_summary(summarise(latest_trace(args.trace_dir), args.top), args.per))


if __name__ == '__main__':
  main()
