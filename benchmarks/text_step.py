"""The text pretraining step against the obvious flax GRU + NT-Xent step: sentences/s and MFU.

  python benchmarks/text_step.py [--batch 256] [--steps N] [--source auto] [--out FILE]
  python benchmarks/text_step.py --quick        # seconds: the test's smoke check

Times, in one process, on real WordNet gloss batches (`wordnet_glosses` when
WordNet is installed under /usr/share/wordnet, else the `embedded_text`
subset shipped in the package; --source picks):

  naive     benchmarks/naive_text_step.py: bi-GRU-256 SimCSE written the
            obvious way (nn.Embed, nn.Bidirectional of two nn.RNN(nn.GRUCell)
            with seq_lengths, masked mean pool, 2-layer MLP head, NT-Xent at
            temperature 0.1 over two word-deletion (p=0.1) views with dropout
            0.1 on the embeddings, optax.adam, one jax.jit), on the
            un-bucketed [B, max_length] batches.
  ours      train.make_pretrain_step with the Text modality and
            configs/text_wordnet.py's settings (its views, dropout, head,
            online probe, AdamW), in two architectures:
              bi   the naive step's: bidirectional, hidden 256;
              uni  the config's own: unidirectional, hidden 256;
            each on the same un-bucketed batches the naive step reads
            (data.length_buckets=0, length_quantum=0: every batch max_length
            wide) and bucketed (--buckets 16, --quantum 4 by default, the
            config's: batches of similar lengths, their padding cut to a
            multiple of 4 tokens).
  matmul    a float32 1024^2 jnp.dot burst per round: the machine's measured
            matmul rate in the same minutes (a second MFU denominator).

The tokenizer is trained on the source's training texts (the config's
vocab_size and min_count: 20,000 and 2) into a temporary directory, as a
pretraining run would.

Timing: every executable is compiled ahead (`jit(...).lower(...).compile()`:
the compile seconds reported apart, and XLA's FLOP count; the timed calls go
through the jitted functions, whose cache holds those executables) and
warmed up by one call; then --steps rounds call every arm in turn (naive,
ours bi at max_length, ours bi at each shorter bucketed width, the same for
uni, the matmul burst), so a busy minute of the shared machine slows all arms
alike. A bucketed arm is timed per width and weighted by the widths' shares
of an epoch's steps (the bucketed pipeline's epoch 0, all of it): its step
time is sum_w p_w x median_w, and each round's pair ratio uses the round's
weighted time. Its max_length-wide batches run the very executable its
un-bucketed arm times, so that width's time is the un-bucketed arm's. Each
width cycles through up to 8 real batches of that width.

FLOPs: analytic, counting matmuls only: per view and sentence, a GRU layer
does 6 H (In + H) FLOPs per token step and direction (three gates' input and
hidden matmuls), times the steps the executable runs (its batch width,
padding included), plus the head, probe and the [2N, 2N] NT-Xent logits; the
step is 3x the forward (the backward's input and weight gradients). XLA's
cost analysis counts a scan's body once, not once per step, so it undercounts
a recurrent step by about the sequence length; its figure is kept in the JSON
record as xla_flops_scan_body_once. MFU = FLOPs / step time / peak, against
(a) the CPU's nominal float32 peak from /proc/cpuinfo: cores x clock x FMA
pipes (2) x vector lanes x 2 (AMD before Zen 5 runs a 512-bit FMA as two
256-bit halves: 8 lanes), and (b) the best measured matmul rate of the run.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# The sibling modules (timing, naive_text_step), also when this file runs by path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import naive_text_step  # pylint: disable=g-import-not-at-top,wrong-import-position
import timing  # pylint: disable=g-import-not-at-top,wrong-import-position

from contrastive_jax import methods, modalities, optim, parallel, train  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.data import pipeline, text_data  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.models import build_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from contrastive_jax.text import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG = os.path.join(REPO, 'configs', 'text_wordnet.py')
WORDNET_DIR = '/usr/share/wordnet'
BUCKETS, QUANTUM = 16, 4   # configs/text_wordnet.py's
MAX_BATCHES = 8          # real batches cycled per arm and width
MATMUL_SIZE = 1024


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=256, help='sentences per step')
  parser.add_argument('--steps', type=int, default=10,
                      help='timed rounds (every arm and width once per round)')
  parser.add_argument('--source', default='auto',
                      choices=('auto', 'wordnet_glosses', 'embedded_text'),
                      help=f'auto: wordnet_glosses when {WORDNET_DIR} exists, else embedded_text')
  parser.add_argument('--quick', action='store_true',
                      help="seconds: configs/text_wordnet.py:tiny's sizes, embedded_text, "
                           '2 rounds')
  parser.add_argument('--out', default='', help='append the record as one JSON line')
  parser.add_argument('--buckets', type=int, default=BUCKETS,
                      help='the bucketed arms\' data.length_buckets')
  parser.add_argument('--quantum', type=int, default=QUANTUM,
                      help='the bucketed arms\' data.length_quantum (tokens)')
  args = parser.parse_args(argv)
  if args.quick:
    args.steps = min(args.steps, 2)
  if args.steps < 1 or args.batch < 2:
    parser.error('--steps must be >= 1 and --batch >= 2.')
  return args


# --- Configuration ----------------------------------------------------------------------

def load_config(args: argparse.Namespace):
  """configs/text_wordnet.py for --source (and --quick), with --batch."""
  spec = importlib.util.spec_from_file_location('configs_text_wordnet', CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  source = args.source
  if args.quick:
    source = 'embedded_text'
  elif source == 'auto':
    source = 'wordnet_glosses' if os.path.isdir(WORDNET_DIR) else 'embedded_text'
  if source == 'wordnet_glosses' and not os.path.isdir(WORDNET_DIR):
    raise SystemExit(f'--source wordnet_glosses needs WordNet 3.0 under {WORDNET_DIR} '
                     '(apt-get install wordnet-base); or use --source embedded_text.')
  config = module.get_config('tiny' if args.quick else
                             ('' if source == 'wordnet_glosses' else 'embedded'))
  if not args.quick:
    config.batch_size = args.batch
    config.data.vocab_size, config.data.min_count = 20_000, 2
  config.data.source = source
  config.data.prefetch = 0
  return config


def train_tokenizer(config, workdir: str) -> int:
  """Trains the run's tokenizer on the training texts into workdir and points
  config.data.tokenizer (and the model's vocab_size) at it; returns its size."""
  texts = text_data.read_texts(config.data, config.data.train_split).texts
  tok = tokenizer_lib.train_tokenizer(texts, kind=config.data.tokenizer_kind,
                                      vocab_size=config.data.vocab_size,
                                      min_count=config.data.min_count)
  tok.save(os.path.join(workdir, text_data.TOKENIZER_FILE))
  config.data.tokenizer = os.path.join(workdir, text_data.TOKENIZER_FILE)
  modalities.setup_run(config, workdir)   # sets config.model.rnn.vocab_size
  return int(tok.vocab_size)


# --- Data ---------------------------------------------------------------------------------

def epoch_batches(source, config, buckets: int, quantum: int) -> list[dict[str, np.ndarray]]:
  """Epoch 0's batches of the training pipeline with these bucketing options."""
  it = pipeline.BatchIterator(source, global_batch_size=config.batch_size, seed=config.seed,
                              bucket_batches=buckets, length_quantum=quantum)
  return [it.get_batch(s) for s in range(int(it.steps_per_epoch))]


# --- Steps ----------------------------------------------------------------------------------

def build_ours(config, bidirectional: bool, modality, num_classes: int, mesh):
  """(jitted step, state) of train.make_pretrain_step for config with
  model.rnn.bidirectional set."""
  cfg = config.copy_and_resolve_references()
  cfg.model.rnn.bidirectional = bidirectional
  method = methods.build(cfg)
  model = build_model(cfg.model, num_classes=num_classes, kernels_cfg=cfg.kernels,
                      predictor=method.predictor(cfg.model))
  tx, schedule = optim.build_optimizer(cfg.optim, batch_size=cfg.batch_size,
                                       total_steps=1000, warmup_steps=50)
  state = train.init_state(model, tx, seed=cfg.seed, dummy_input=modality.dummy_input(),
                           mesh=mesh)
  return train.make_pretrain_step(model, tx, schedule, method, modality, mesh), state


def step_flops(config, batch: int, width: int, bidirectional: bool, probe_classes: int) -> float:
  """Analytic matmul FLOPs of one pretraining step (see the module docstring)."""
  rnn = config.model.rnn
  dirs = 2 if bidirectional else 1
  embed, hidden, layers = rnn.embed_dim, rnn.hidden_dim, rnn.num_layers
  n = 2 * batch                                   # two views of every sentence
  gru = 0
  for k in range(layers):
    inputs = embed if k == 0 else hidden * dirs
    gru += width * dirs * 6 * hidden * (inputs + hidden)
  h = hidden * dirs
  head = 2 * (h * h + h * config.model.proj_dim) + 2 * h * probe_classes
  logits = 2 * n * n * config.model.proj_dim
  return 3.0 * (n * (gru + head) + logits)


def cpu_peak() -> tuple[float, str]:
  """(nominal float32 FLOP/s, how it was computed) from /proc/cpuinfo."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      text = f.read()
  except OSError:
    return math.nan, 'no /proc/cpuinfo: nominal peak unknown'
  fields = {}
  for line in text.splitlines():
    key, _, value = line.partition(':')
    fields.setdefault(key.strip(), value.strip())
  flags = set(fields.get('flags', '').split())
  mhz = float(fields.get('cpu MHz', 'nan'))
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  lanes = 16 if 'avx512f' in flags else 8 if 'avx2' in flags else 4
  amd_half = (fields.get('vendor_id') == 'AuthenticAMD' and lanes == 16
              and int(fields.get('cpu family', '0') or 0) < 26)
  if amd_half:
    lanes = 8
  fma = 2 if 'fma' in flags else 1
  peak = cores * mhz * 1e6 * 2 * lanes * fma
  how = (f"{cores} cores x {mhz / 1e3:.2f} GHz x 2 FMA pipes x {lanes} float32 lanes x {fma} "
         f"({fields.get('model name', '?')}, "
         + ('AVX-512 as two 256-bit halves' if amd_half else
            'AVX-512' if lanes == 16 else 'AVX2' if lanes == 8 else 'SSE') + ')')
  return peak, how


def main(argv=None) -> None:
  args = parse_args(argv)
  start = time.time()
  config = load_config(args)
  mesh = parallel.make_mesh(jax.devices()[:1])
  workdir = tempfile.mkdtemp(prefix='cj_text_step_')
  vocab = train_tokenizer(config, workdir)
  source = pipeline.load_split(config.data, 'train')
  length = source.input_shape[0]
  plain = epoch_batches(source, config, 0, 0)
  bucketed = epoch_batches(source, config, args.buckets, args.quantum)
  widths = collections.Counter(b[source.input_key].shape[1] for b in bucketed)
  share = {w: c / len(bucketed) for w, c in sorted(widths.items())}
  print(f'{config.data.source}: {source.num_examples} training sentences, vocabulary {vocab}, '
        f'{len(bucketed)} steps per epoch of {config.batch_size}; bucketed widths (share of '
        'steps): ' + ', '.join(f'{w} ({100 * p:.1f}%)' for w, p in share.items()),
        file=sys.stderr)

  def device_batches(batches):
    return [parallel.global_batch(b, mesh) for b in batches[:MAX_BATCHES]]
  plain_dev = device_batches(plain)
  by_width = {w: device_batches([b for b in bucketed if b[source.input_key].shape[1] == w])
              for w in share if w != length}

  modality = modalities.build(config, source.input_shape)
  rows: dict[str, dict[str, Any]] = {}
  calls: list[Callable[[], Any]] = []
  keys: list[tuple[str, int]] = []

  def cycling(step_fn, holder, batches):
    """A call of the jitted step_fn (its executables compiled ahead, in jit's
    cache) on the next of `batches`, donating the state in `holder`."""
    it = [0]

    def call():
      b = batches[it[0] % len(batches)]
      it[0] += 1
      holder[0], out = step_fn(holder[0], b)
      return holder[0], out
    return call

  # Naive: the un-bucketed batches' token ids, on one device (as its state,
  # so every call has the argument placement of the compiled one).
  rnn = config.model.rnn
  naive_fn, naive_state = naive_text_step.make_naive_text_step(
      vocab, length, embed_dim=rnn.embed_dim, hidden_dim=rnn.hidden_dim, bidirectional=True,
      proj_dim=config.model.proj_dim, dropout=rnn.dropout,
      deletion=config.text_augment.deletion, temperature=config.simclr.temperature,
      learning_rate=config.optim.learning_rate, seed=config.seed)
  device = jax.devices()[0]
  naive_state = jax.device_put(naive_state, device)
  ids = [jax.device_put(b[source.input_key], device) for b in plain[:MAX_BATCHES]]
  t0 = time.perf_counter()
  compiled = naive_fn.lower(naive_state, ids[0]).compile()
  rows['naive'] = dict(arm='naive', directions=2, compile_s=time.perf_counter() - t0,
                       widths={length: 1.0},
                       flops={length: step_flops(config, config.batch_size, length, True, 0)},
                       xla_flops_scan_body_once={length: timing._cost_flops(compiled)})  # pylint: disable=protected-access
  calls.append(cycling(naive_fn, [naive_state], ids))
  keys.append(('naive', length))

  for bidirectional in (True, False):
    tag = 'bi' if bidirectional else 'uni'
    step_fn, state = build_ours(config, bidirectional, modality, source.num_classes, mesh)
    holder = [state]
    compile_s, flops, xla = 0.0, {}, {}
    for w, batches in [(length, plain_dev)] + sorted(by_width.items()):
      t0 = time.perf_counter()
      compiled = step_fn.lower(holder[0], batches[0]).compile()
      compile_s += time.perf_counter() - t0
      flops[w] = step_flops(config, config.batch_size, w, bidirectional, source.num_classes)
      xla[w] = timing._cost_flops(compiled)  # pylint: disable=protected-access
      calls.append(cycling(step_fn, holder, batches))
      keys.append((tag, w))
    for arm, w_share in ((f'ours {tag} plain', {length: 1.0}),
                         (f'ours {tag} bucketed', share)):
      rows[arm] = dict(arm=arm, directions=2 if bidirectional else 1, compile_s=compile_s,
                       widths=w_share, flops={w: flops[w] for w in w_share},
                       xla_flops_scan_body_once={w: xla[w] for w in w_share}, tag=tag)

  times, _, matmul = timing.time_with_matmul_rate(
      calls, args.steps, warmup=1, dtype=jnp.float32, size=MATMUL_SIZE, burst_calls=3)
  by_key = dict(zip(keys, times))
  peak, peak_how = cpu_peak()
  matmul_rate = matmul['best_flops_per_s']

  def round_times(row):
    src = 'naive' if row['arm'] == 'naive' else row['tag']
    return [sum(p * by_key[(src, w)][r] for w, p in row['widths'].items())
            for r in range(args.steps)]

  for row in rows.values():
    src = 'naive' if row['arm'] == 'naive' else row['tag']
    row['step_s'] = sum(p * statistics.median(by_key[(src, w)]) for w, p in row['widths'].items())
    row['round_s'] = round_times(row)
    row['step_flops'] = sum(p * row['flops'][w] for w, p in row['widths'].items())
    row['sentences_per_s'] = config.batch_size / row['step_s']
    row['flops_per_s'] = row['step_flops'] / row['step_s']
    row['mfu_peak'] = row['flops_per_s'] / peak
    row['mfu_matmul'] = row['flops_per_s'] / matmul_rate
    row['width_median_s'] = {w: statistics.median(by_key[(src, w)]) for w in row['widths']}
  naive = rows['naive']
  for row in rows.values():
    row['ratio_over_naive'] = row['sentences_per_s'] / naive['sentences_per_s']
    row['pair_ratios'] = timing.pair_ratios(row['round_s'], naive['round_s'])

  env = timing.environment()
  print(timing.environment_line(env))
  print(f'# {config.data.source}, batch {config.batch_size} sentences (2 views each), '
        f'max_length {length}, GRU embed {rnn.embed_dim} hidden {rnn.hidden_dim}, '
        f'{args.steps} rounds after 1 warm-up round, {time.time() - start:.0f} s in all')
  print(f'# nominal peak {peak / 1e9:.1f} GFLOP/s = {peak_how}; measured matmul '
        f'(float32 {MATMUL_SIZE}^2, best of {matmul["bursts"]} bursts) '
        f'{matmul_rate / 1e9:.1f} GFLOP/s\n')
  print('| arm | directions | batch widths (share of an epoch\'s steps) | step ms | '
        'sentences/s | ours / naive | GFLOP/step (analytic) | GFLOP/s | MFU of nominal peak | '
        'MFU of measured matmul | compile s |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  for row in rows.values():
    mix = ', '.join(f'{w} ({100 * p:.0f}%)' for w, p in row['widths'].items())
    print(f"| {row['arm']} | {row['directions']} | {mix} | {1e3 * row['step_s']:.1f} | "
          f"{row['sentences_per_s']:.1f} | {row['ratio_over_naive']:.2f}x | "
          f"{row['step_flops'] / 1e9:.2f} | {row['flops_per_s'] / 1e9:.1f} | "
          f"{100 * row['mfu_peak']:.1f}% | {100 * row['mfu_matmul']:.1f}% | "
          f"{row['compile_s']:.1f} |")
  print()
  for tag, what in (('bi', 'same architecture (bi-GRU)'),
                    ('uni', "the config's architecture (uni-GRU)")):
    for kind in ('bucketed', 'plain'):
      row = rows[f'ours {tag} {kind}']
      print(f'ratio ours/naive (sentences/s), {what}, {kind}: {row["ratio_over_naive"]:.2f} '
            f'({timing.pairs_summary(row["pair_ratios"])})')
  print('per-width step ms (median): ' + '; '.join(
      f"{row['arm']} " + ', '.join(f'{w}: {1e3 * t:.1f}' for w, t in row['width_median_s'].items())
      for row in rows.values() if 'plain' not in row['arm']))
  if args.out:
    timing.append_jsonl(args.out, dict(
        kind='text_step', env=env, args=vars(args), source=config.data.source,
        batch=config.batch_size, max_length=length, vocab_size=vocab,
        epoch_width_share=share, peak_flops_per_s=peak, peak_how=peak_how, matmul=matmul,
        rows=list(rows.values()), wall_s=time.time() - start))
  shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
  main()
