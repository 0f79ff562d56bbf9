"""Speed of the 'rnn' encoder's two implementations: impl='fused' against impl='flax'.

One training-shaped step per setting: forward and backward of the encoder
alone with a mean loss (jax.value_and_grad of mean(h), jitted), batch 256 x 32
tokens (every row of full length, so all steps do work), GRU with embed 128,
hidden 256, uni- and bidirectional, scan unroll 1 / 4 / 8. The settings run in
turn (each round calls every one once), so a busy minute of a shared machine
slows all of them alike; a setting's time is its median over the rounds after
one warm-up call. Prints one markdown row per (directions, unroll) with the
sentences/s of each impl and fused / flax.

  python benchmarks/rnn_encoder.py [--rounds 5] [--batch 256] [--length 32]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from contrastive_jax.models import rnn  # pylint: disable=wrong-import-position

VOCAB = 20000


def step_fn(impl: str, bidirectional: bool, unroll: int, embed: int, hidden: int):
  """(jitted step(params, ids) -> (loss, grads), the encoder)."""
  encoder = rnn.RNNEncoder(vocab_size=VOCAB, embed_dim=embed, hidden_dim=hidden, cell='gru',
                           bidirectional=bidirectional, dropout=0.0, pooling='mean',
                           impl=impl, unroll=unroll)

  def loss(params, ids):
    return jnp.mean(encoder.apply({'params': params}, ids, train=False))

  return jax.jit(jax.value_and_grad(loss)), encoder


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--length', type=int, default=32)
  parser.add_argument('--embed', type=int, default=128)
  parser.add_argument('--hidden', type=int, default=256)
  parser.add_argument('--unrolls', default='1,4,8')
  args = parser.parse_args()
  start = time.time()
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(3, VOCAB, (args.batch, args.length)), jnp.int32)
  unrolls = [int(u) for u in args.unrolls.split(',')]
  settings = list(itertools.product((True, False), unrolls, rnn.IMPLS))
  steps, params = {}, {}
  for bidirectional, unroll, impl in settings:
    fn, encoder = step_fn(impl, bidirectional, unroll, args.embed, args.hidden)
    if bidirectional not in params:  # the impls share parameters
      params[bidirectional] = encoder.init(jax.random.PRNGKey(0), ids[:2], train=False)['params']
    t0 = time.time()
    jax.block_until_ready(fn(params[bidirectional], ids))  # compile + warm-up
    steps[(bidirectional, unroll, impl)] = fn
    print(f'compiled bi={bidirectional} unroll={unroll} {impl}: {time.time() - t0:.1f} s',
          file=sys.stderr)
  times = {key: [] for key in steps}
  for _ in range(args.rounds):
    for key, fn in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(params[key[0]], ids))
      times[key].append(time.perf_counter() - t0)
  print(f'jax {jax.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, batch '
        f'{args.batch} x {args.length} tokens, GRU embed {args.embed} hidden {args.hidden}, '
        f'{args.rounds} rounds, {time.time() - start:.0f} s in all\n')
  print('| directions | unroll | fused sentences/s | flax sentences/s | fused / flax |')
  print('|---|---|---|---|---|')
  for bidirectional in (True, False):
    for unroll in unrolls:
      rate = {impl: args.batch / float(np.median(times[(bidirectional, unroll, impl)]))
              for impl in rnn.IMPLS}
      print(f'| {2 if bidirectional else 1} | {unroll} | {rate["fused"]:.0f} | '
            f'{rate["flax"]:.0f} | {rate["fused"] / rate["flax"]:.2f}x |')


if __name__ == '__main__':
  main()
