"""Timing harness: step functions timed in turn, FLOPs, MFU and kernel work.

Generic machinery for benchmarks/throughput.py; nothing here knows SimCLR or
contrastive_jax. A step function is any zero-argument callable that runs one
step and returns something to block on.

Step time: each call is ended by jax.block_until_ready; a row's time is the
median over its timed calls, after compilation and the warm-up calls.

Calls in turn: time_interleaved calls the functions one after another (f0,
f1, ..., f0, f1, ...), so their times are paired: a slow minute of a shared
machine slows every function alike, and their ratio holds while the absolute
times drift. pair_ratios gives one ratio per round.

FLOPs: compile_timed takes them from XLA's cost analysis of the compiled
executable (`compiled.cost_analysis()['flops']`, per device for a sharded
program, so multiplied by the device count). When the compiled module hides
convolutions in custom calls (cuDNN on GPU reports ~0), the unoptimised
module's count (`lowered.cost_analysis()`) is used, and the source says so.

MFU (model FLOP utilisation): a row's FLOPs per second over the device's
measured matmul rate in the compute dtype. matmul_burst times a burst of
matmul calls per round, in turn with the steps, so the rate comes from the same
minutes as the steps; the best call of each burst is the device's rate then.

Kernel work: with `usage`, each timed call records the minor page faults and
system CPU seconds of the whole process during the call (getrusage; nothing
else runs then). On CPU the kernel's zeroing of fresh pages is a large and
variable part of a step's time, which these fields make visible
(benchmarks/NOTES.md, idea 42).

Records: row_record gives a row's JSON fields, environment the machine and
versions, append_jsonl writes one JSON line; the table_* and *_line helpers
format the markdown table rows.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

# benchmarks/trace_summary.py and provenance.py, also when this file is loaded
# by path (runpy, tests).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # pylint: disable=g-import-not-at-top,wrong-import-position
import trace_summary  # pylint: disable=g-import-not-at-top,wrong-import-position


@dataclasses.dataclass
class Timing:
  """One timed row; its fields are the row's JSON fields (with row_record's)."""
  name: str
  compile_s: float = math.nan
  step_s: float = math.nan             # median
  step_min_s: float = math.nan
  step_max_s: float = math.nan
  flops: float = math.nan              # per call, global: model FLOPs (MFU numerator)
  flops_source: str = ''
  steps: int = 0
  executed_flops: float = math.nan     # this executable's own count, where it differs
  # Process-wide, median per step (CPU: the kernel's work for the step).
  page_faults: float = math.nan        # minor page faults (first touch of fresh memory)
  system_s: float = math.nan           # system CPU seconds, summed over threads

  @classmethod
  def of(cls, name: str, times: Sequence[float],
         usage: Sequence[tuple[float, float]] = (), **fields: Any) -> 'Timing':
    """The row of `times` (seconds per call) and their usage samples."""
    return cls(name, step_s=statistics.median(times), step_min_s=min(times),
               step_max_s=max(times), steps=len(times), **fields, **usage_medians(usage))


# ----------------------------------------------------------------------------
# Compilation and FLOPs.

def _cost_flops(obj: Any) -> float:
  try:
    cost = obj.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return math.nan
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', math.nan))


def lowered_flops(jitted, *example_args) -> float:
  """FLOPs per call of the unoptimised HLO (lowered, nothing compiled or run)."""
  return _cost_flops(jitted.lower(*example_args))


def compile_timed(jitted, *example_args, num_devices: int,
                  compiler_options: Optional[dict[str, str]] = None
                  ) -> tuple[Any, float, float, str]:
  """(compiled, compile seconds, global FLOPs per call, where the FLOPs came from)."""
  t0 = time.perf_counter()
  lowered = jitted.lower(*example_args)
  compiled = lowered.compile(compiler_options) if compiler_options else lowered.compile()
  compile_s = time.perf_counter() - t0
  # Compiled (optimised, SPMD-partitioned: per device) module's count.
  flops = _cost_flops(compiled) * num_devices
  source = 'compiled' + (f' x {num_devices} devices' if num_devices > 1 else '')
  unopt = _cost_flops(lowered)  # whole program before partitioning and fusion
  if not flops > 0 or (unopt > 0 and flops < 0.5 * unopt):
    # e.g. GPU: convolutions become cuDNN custom calls that count ~0 FLOPs.
    flops, source = unopt, 'lowered (unoptimised HLO)'
  return compiled, compile_s, flops, source


# ----------------------------------------------------------------------------
# Timing calls in turn.

def process_usage() -> tuple[float, float]:
  """(minor page faults, system CPU seconds) of this process so far; NaNs
  where the platform has no getrusage (Windows)."""
  try:
    import resource  # pylint: disable=g-import-not-at-top  (POSIX only)
  except ImportError:
    return math.nan, math.nan
  ru = resource.getrusage(resource.RUSAGE_SELF)
  return float(ru.ru_minflt), ru.ru_stime


def time_interleaved(fns: Sequence[Callable[[], Any]], steps: int, warmup: int,
                     usage: Optional[list[list[tuple[float, float]]]] = None
                     ) -> list[list[float]]:
  """Seconds per call of each fn, calling them in turn (f0, f1, f0, f1, ...).

  Taking turns pairs the functions' times: a shared machine's slow minute
  slows all of them, so their ratio holds when their absolute times drift.
  With `usage` (one list per fn), each timed call also appends its
  (minor page faults, system CPU seconds) from process_usage().
  """
  for _ in range(warmup):
    for fn in fns:
      jax.block_until_ready(fn())
  times = [[] for _ in fns]
  for _ in range(steps):
    for i, (fn, ts) in enumerate(zip(fns, times)):
      u0 = process_usage() if usage is not None else None
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      ts.append(time.perf_counter() - t0)
      if u0 is not None:
        u1 = process_usage()
        usage[i].append((u1[0] - u0[0], u1[1] - u0[1]))
  return times


def donating_call(compiled: Any, state: Any, batch: Any
                  ) -> tuple[Callable[[], Any], list[Any]]:
  """A step function of a compiled step(state, batch) -> (state, out) that
  donates its state: each call replaces the state and returns (state, out).
  Also returns the one-item list that holds the state: clearing it frees it."""
  holder = [state]

  def call():
    holder[0], out = compiled(holder[0], batch)
    return holder[0], out
  return call, holder


def time_calls(fn: Callable[[], Any], steps: int, warmup: int) -> list[float]:
  """Seconds per call of one function."""
  return time_interleaved([fn], steps, warmup)[0]


def usage_medians(samples: Sequence[tuple[float, float]]) -> dict[str, float]:
  """Timing fields page_faults and system_s: medians over the timed calls."""
  if not samples:
    return {}
  return dict(page_faults=statistics.median(s[0] for s in samples),
              system_s=statistics.median(s[1] for s in samples))


def pair_ratios(base: Sequence[float], other: Sequence[float]) -> list[float]:
  """other_i / base_i for each round of calls in turn: base's speed-up per pair."""
  return [o / b for b, o in zip(base, other)]


# ----------------------------------------------------------------------------
# The matmul rate (MFU's denominator).

def matmul_burst(dtype: Any, size: int, calls: int
                 ) -> tuple[Callable[[], None], dict[str, list[float]], float]:
  """(burst, seconds per form, FLOPs per call) for a size^3 matmul in `dtype`.

  Each burst() makes `calls` back-to-back calls of each form and appends the
  form's fastest to its list. A single call straight after a long step runs
  well below the rate of warm repeated calls (cold threads and caches), which
  would inflate MFU; the best of a burst is the device's rate at that moment.

  Below float32 two forms are timed: the dtype's own output (`jnp.dot`) and
  float32 output (`preferred_element_type`, what the project's CPU weight
  gradient asks for). The peak is the faster of the two (fastest_per_burst),
  whichever the backend prefers: XLA:CPU on a CPU with AVX512-BF16 runs
  bf16 x bf16 -> f32 well above the bf16 -> bf16 rate (benchmarks/NOTES.md,
  idea 37), so timing only the first form would overstate bfloat16 MFU.
  """
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(key_a, (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(key_b, (size, size), jnp.float32).astype(dtype)
  forms = {f'{jnp.dtype(dtype).name} out': jnp.dot}
  if jnp.dtype(dtype) != jnp.float32:
    forms['float32 out'] = functools.partial(jnp.dot, preferred_element_type=jnp.float32)
  compiled = {name: jax.jit(fn).lower(a, b).compile() for name, fn in forms.items()}
  seconds: dict[str, list[float]] = {name: [] for name in compiled}

  def burst() -> None:
    for name, dot in compiled.items():
      seconds[name].append(min(time_calls(lambda dot=dot: dot(a, b), calls, warmup=0)))
  return burst, seconds, 2.0 * size ** 3


def fastest_per_burst(seconds: dict[str, list[float]]) -> list[float]:
  """Per burst, the time of its fastest form: the device's matmul peak then."""
  return [min(ts) for ts in zip(*seconds.values())]


def time_with_matmul_rate(calls: Sequence[Callable[[], Any]], steps: int, warmup: int,
                          dtype: Any, size: int, burst_calls: int
                          ) -> tuple[list[list[float]], list[list[tuple[float, float]]],
                                     dict[str, Any]]:
  """Times `calls` in turn with a matmul burst after each round.

  Returns (seconds per call, usage samples per call, the matmul record): the
  record holds the dtype, the matmul's side, the best and median rate over
  the timed rounds' bursts (FLOP/s), the number of bursts and the best rate
  of each form.
  """
  burst, form_times, flops = matmul_burst(dtype, size, calls=burst_calls)
  usage: list[list[tuple[float, float]]] = [[] for _ in range(len(calls) + 1)]
  times = time_interleaved(list(calls) + [burst], steps, warmup, usage=usage)
  times.pop()  # the bursts' own wall times; form_times has each burst's best call
  usage.pop()
  form_times = {name: ts[-steps:] for name, ts in form_times.items()}  # warm-up dropped
  per_burst = fastest_per_burst(form_times)
  matmul = dict(dtype=jnp.dtype(dtype).name, size=size,
                best_flops_per_s=flops / min(per_burst),
                median_flops_per_s=flops / statistics.median(per_burst),
                bursts=len(per_burst),
                best_flops_per_s_by_form={name: flops / min(ts)
                                          for name, ts in form_times.items()})
  return times, usage, matmul


# ----------------------------------------------------------------------------
# Profiling.

def profile_calls(call: Callable[[], Any], compiled: Any, trace_dir: str,
                  hlo_file: str = 'hlo.txt', calls: int = 5) -> dict[str, Any]:
  """Traces `calls` calls (already compiled and warm) into trace_dir, with the
  executable's optimised HLO beside it in `hlo_file` (fusion names -> ops),
  and returns trace_summary.summarise of the trace."""
  os.makedirs(trace_dir, exist_ok=True)
  with open(os.path.join(trace_dir, hlo_file), 'w', encoding='utf-8') as f:
    f.write(compiled.as_text())
  jax.block_until_ready(call())
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(calls):
      jax.block_until_ready(call())
  summary = trace_summary.summarise(trace_summary.latest_trace(trace_dir))
  summary['calls'] = calls
  return summary


# ----------------------------------------------------------------------------
# Records.

def row_record(t: Timing, batch: int, peak_flops_per_s: float) -> dict[str, Any]:
  """A row's JSON fields: Timing's, images/s (of `batch` images per call),
  FLOPs per image, FLOP/s and MFU against peak_flops_per_s."""
  return dataclasses.asdict(t) | dict(
      images_per_s=batch / t.step_s,
      flops_per_image=t.flops / batch,
      flops_per_s=t.flops / t.step_s,
      mfu=t.flops / t.step_s / peak_flops_per_s)


def environment() -> dict[str, Any]:
  """The machine, backend, library versions and commit of this run."""
  dev = jax.devices()[0]
  return dict(
      date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      backend=jax.default_backend(), device_kind=dev.device_kind,
      num_devices=jax.device_count(), host=platform.node(), cpu_count=os.cpu_count(),
      loadavg=os.getloadavg()[0] if hasattr(os, 'getloadavg') else math.nan,
      python=platform.python_version(), jax=jax.__version__,
      jaxlib=_jaxlib_version(),
      flax=flax.__version__, optax=optax.__version__, numpy=np.__version__,
      commit=provenance.git_commit())


def environment_line(env: dict[str, Any]) -> str:
  """environment() as one '# ...' line above a table."""
  return (f"# {env['date']} | {env['backend']} {env['device_kind']} | {env['cpu_count']} CPUs, "
          f"load {env['loadavg']:.1f} | jax {env['jax']} jaxlib {env['jaxlib']} flax "
          f"{env['flax']} optax {env['optax']} | commit {env['commit']}")


def _jaxlib_version() -> str:
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    return jaxlib.__version__
  except Exception:  # pylint: disable=broad-except
    return 'unknown'


def append_jsonl(path: str, record: dict[str, Any]) -> None:
  """Appends `record` as one JSON line (NaN as NaN, numpy scalars as floats)."""
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps(record, default=float) + '\n')


# ----------------------------------------------------------------------------
# Markdown table.

TABLE_HEADER = (
    '| row | step ms (median) | min-max ms | images/s | model GFLOP/image | model GFLOP/s | MFU | '
    'compile s |',
    '|---|---|---|---|---|---|---|---|',
)


def table_row(label: str, t: dict[str, Any]) -> str:
  """The table row of a row_record; '- (eager)' where nothing is compiled."""
  return (
      f"| {label} | {1e3 * t['step_s']:.1f} | {1e3 * t['step_min_s']:.1f}-"
      f"{1e3 * t['step_max_s']:.1f} | {t['images_per_s']:.1f} | "
      f"{t['flops_per_image'] / 1e9:.3f} | {t['flops_per_s'] / 1e9:.1f} | "
      f"{100 * t['mfu']:.1f}% | "
      + (f"{t['compile_s']:.1f} |" if math.isfinite(t['compile_s']) else '- (eager) |'))


def matmul_row(m: dict[str, Any]) -> str:
  """The table row of time_with_matmul_rate's matmul record."""
  forms = m.get('best_flops_per_s_by_form') or {}
  form = (f", {max(forms, key=forms.get)} (best of "
          + ', '.join(f'{k} {v / 1e9:.1f}' for k, v in forms.items()) + ')'
          if len(forms) > 1 else '')
  return (f"| matmul {m['dtype']} {m['size']}^2{form} (best / median of "
          f"{m.get('bursts', '?')} bursts) | - | - | - | - | "
          f"{m['best_flops_per_s'] / 1e9:.1f} / {m['median_flops_per_s'] / 1e9:.1f} | 100% | - |")


def pairs_summary(pairs: Sequence[float]) -> str:
  """'per pair median R, min-max A-B' of pair_ratios."""
  pairs = list(pairs) or [math.nan]
  return (f'per pair median {statistics.median(pairs):.2f}, '
          f'min-max {min(pairs):.2f}-{max(pairs):.2f}')


def kernel_work_line(rows: Sequence[tuple[str, dict[str, Any]]]) -> Optional[str]:
  """Page faults and system CPU per step of the rows that have them, or None."""
  rows = [(name, t) for name, t in rows
          if t and math.isfinite(t.get('page_faults', math.nan))]
  if not rows:
    return None
  return 'kernel work per step (whole process, median): ' + '; '.join(
      f"{name} {t['page_faults']:,.0f} minor page faults, {t['system_s']:.2f} s system CPU"
      for name, t in rows)
