r"""word2vec in JAX against gensim on the same corpus and hyperparameters.

  python benchmarks/word2vec.py                        # every WordNet gloss, 5 epochs, skip-gram
  python benchmarks/word2vec.py --epochs 1 --quick     # a short check (a tenth of the glosses)
  python benchmarks/word2vec.py --kernels auto,xla       # the fused CPU kernel beside the XLA update
  python benchmarks/word2vec.py --substeps 1,4          # a step as 1 and as 4 sequential updates

1. The corpus: every WordNet 3.0 gloss (contrastive_jax.data.wordnet.all_glosses,
   about 1.46M words), tokenised by contrastive_jax.word2vec.vocab.tokenize; gensim
   gets the same token lists.
2. gensim.models.Word2Vec(workers=--workers, the same sg, vector_size, window,
   negative, min_count, sample, ns_exponent, alpha, epochs, seed): build_vocab,
   then train, timed; its words/s are train()'s own counts (raw: every corpus
   word; effective: after the vocabulary and subsampling) over train()'s time.
3. `contrastive_jax.word2vec.train.train_and_evaluate` in a fresh workdir with
   the same settings (the binary's code path, compile time included in its
   timing), once per --kernels value (config.update_kernel: 'auto' takes the
   fused CPU kernel on one CPU device, 'xla' the XLA update) and --substeps
   value (config.substeps); its words/s are the run's raw and effective words
   over the loop's time.
4. Both sets of vectors through the same evaluation (contrastive_jax.word2vec.evaluate):
   WordSim-353 and SimLex-999 Spearman, 3CosAdd analogy accuracy over the
   --restrict-vocab most frequent words, OOV rates; and downstream, averaged
   vectors + logistic regression on the WordNet noun glosses' 26 lexicographer
   classes at 1% and 10% of the labels (a fixed stratified 20% test split),
   against random vectors of the same vocabulary.

Writes OUT/word2vec.json and prints a table. The CPU is timed: note what else
ran on it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from contrastive_jax.data import wordnet  # pylint: disable=wrong-import-position
from contrastive_jax.word2vec import evaluate, train, vocab as vocab_lib  # pylint: disable=wrong-import-position
from configs import word2vec as w2v_config  # pylint: disable=wrong-import-position


def run_gensim(sentences, args) -> dict:
  from gensim.models import Word2Vec  # pylint: disable=g-import-not-at-top
  model = Word2Vec(vector_size=args.vector_size, window=args.window, negative=args.negative,
                   min_count=args.min_count, sample=args.sample, sg=args.sg, workers=args.workers,
                   epochs=args.epochs, seed=args.seed, alpha=0.025, min_alpha=0.0001,
                   ns_exponent=0.75, hs=0)
  model.build_vocab(sentences)
  started = time.perf_counter()
  effective, raw = model.train(sentences, total_examples=len(sentences), epochs=args.epochs)
  seconds = time.perf_counter() - started
  words = list(model.wv.index_to_key)
  return {'words': words, 'vectors': model.wv.vectors, 'seconds': seconds,
          'raw_words_per_sec': raw / seconds, 'effective_words_per_sec': effective / seconds,
          'gensim_own_ws353': float(model.wv.evaluate_word_pairs(
              evaluate.benchmark_path('ws353'))[1].statistic)}


def run_jax(corpus_path: str, args, kernel: str, substeps: int) -> dict:
  config = w2v_config.get_config('' if args.sg else 'cbow')
  config.corpus.source, config.corpus.path = 'text', corpus_path
  for key in ('vector_size', 'window', 'negative', 'min_count', 'sample', 'seed', 'sg'):
    config[key] = getattr(args, key)
  config.num_epochs, config.batch_size = args.epochs, args.batch
  config.row_update_cap, config.update_kernel = args.row_update_cap, kernel
  config.substeps = substeps
  config.log_every_steps, config.checkpoint_every_steps = 20, 10**9
  config.eval.intrinsic = False
  workdir = tempfile.mkdtemp(prefix='w2v_bench_')
  started = time.perf_counter()
  results = train.train_and_evaluate(config, workdir)
  from contrastive_jax.word2vec import vectors  # pylint: disable=g-import-not-at-top
  words, table = vectors.load_word_vectors(workdir)
  return {'words': words, 'vectors': table, 'seconds': results.get('raw_words_per_sec') and
          time.perf_counter() - started, 'raw_words_per_sec': results['raw_words_per_sec'],
          'effective_words_per_sec': results['effective_words_per_sec'], 'workdir': workdir}


def quality(words, table, args, nouns) -> dict:
  out = evaluate.intrinsic(words, table, args.restrict_vocab)
  texts, labels = nouns
  for fraction in (0.01, 0.1):
    out[f'gloss_acc_{fraction:g}'] = evaluate.gloss_classification(words, table, texts, labels,
                                                                   fraction)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=int, default=5)
  parser.add_argument('--sg', type=int, default=1)
  parser.add_argument('--vector-size', dest='vector_size', type=int, default=100)
  parser.add_argument('--window', type=int, default=5)
  parser.add_argument('--negative', type=int, default=5)
  parser.add_argument('--min-count', dest='min_count', type=int, default=5)
  parser.add_argument('--sample', type=float, default=1e-3)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--batch', type=int, default=w2v_config.get_config().batch_size,
                      help='corpus words per JAX step')
  parser.add_argument('--row-update-cap', dest='row_update_cap', type=float,
                      default=w2v_config.get_config().row_update_cap)
  parser.add_argument('--substeps', default=str(w2v_config.get_config().substeps),
                      help='config.substeps values to run ours with, comma-separated')
  parser.add_argument('--workers', type=int, default=2, help="gensim's worker threads")
  parser.add_argument('--restrict-vocab', dest='restrict_vocab', type=int, default=30000)
  parser.add_argument('--quick', action='store_true', help='a tenth of the glosses')
  parser.add_argument('--skip-gensim', action='store_true')
  parser.add_argument('--kernels', default='auto',
                      help="config.update_kernel values to run ours with, comma-separated "
                           "(e.g. 'auto,xla': the fused CPU kernel and XLA side by side)")
  parser.add_argument('--out', default='/tmp/cj_word2vec_bench')
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)

  glosses = wordnet.all_glosses()
  if args.quick:
    glosses = glosses[::10]
  sentences = [vocab_lib.tokenize(g) for g in glosses]
  corpus_path = os.path.join(args.out, 'corpus.txt')
  with open(corpus_path, 'w', encoding='utf-8') as f:
    f.writelines(' '.join(s) + '\n' for s in sentences)
  texts, labels, _ = wordnet.noun_glosses()
  nouns = (texts, labels)

  report = {'date': datetime.date.today().isoformat(), 'machine': platform.processor() or
            platform.machine(), 'cpus': os.cpu_count(), 'args': vars(args),
            'corpus_words': int(sum(len(s) for s in sentences)),
            'commit': subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                                     text=True, check=False).stdout.strip()}
  systems = {}
  if not args.skip_gensim:
    systems['gensim'] = run_gensim(sentences, args)
  runs = [(k, int(s)) for k in args.kernels.split(',') for s in args.substeps.split(',')]
  names = ['jax' + (f'_{k}' if ',' in args.kernels else '') + (f'_s{s}' if ',' in args.substeps
                                                                else '') for k, s in runs]
  for name, (kernel, substeps) in zip(names, runs):
    systems[name] = run_jax(corpus_path, args, kernel, substeps)
  rng = np.random.default_rng(0)
  jax_words = systems[names[0]]['words']
  random_table = (rng.random((len(jax_words), args.vector_size), np.float32) - 0.5)
  for name, s in systems.items():
    s.update(quality(s['words'], s['vectors'], args, nouns))
  report['random_vectors'] = {k: v for k, v in quality(jax_words, random_table, args, nouns).items()
                              if k.startswith('gloss_acc')}
  for name, s in systems.items():
    report[name] = {k: v for k, v in s.items() if k not in ('words', 'vectors')}
    report[name]['vocab_size'] = len(s['words'])
  with open(os.path.join(args.out, 'word2vec.json'), 'w') as f:
    json.dump(report, f, indent=2, default=float)
  keys = ('raw_words_per_sec', 'effective_words_per_sec', 'ws353_spearman', 'simlex999_spearman',
          'analogy_accuracy', 'analogy_oov_rate', 'gloss_acc_0.01', 'gloss_acc_0.1')
  print(f"{'':26s}" + ''.join(f'{n:>14s}' for n in systems) + f"{'random':>14s}")
  for k in keys:
    row = ''.join(f"{report[n].get(k, float('nan')):14.4g}" for n in systems)
    print(f'{k:26s}{row}{report["random_vectors"].get(k, float("nan")):14.4g}')
  print(f"written: {os.path.join(args.out, 'word2vec.json')}")


if __name__ == '__main__':
  main()
