"""train_and_evaluate(config, workdir): word2vec on the shared training lifecycle.

Set-up, exact resume, the loop with its checkpoints, SIGTERM handling,
metrics.jsonl / TensorBoard and the progress line (in corpus words/s) are
trainer.Run's; this module builds the vocabulary and corpus (corpus.py), the
stream of examples (pairs.py) and the SGNS update (sgns.py), and at the end
writes the vectors (vectors.py), logs the probe words' neighbours and
evaluates them (evaluate.py) into WORKDIR/word2vec_results.json.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from contrastive_jax import trainer
from contrastive_jax.word2vec import corpus, defaults, evaluate, pairs, sgns, vectors
from contrastive_jax.word2vec import vocab as vocab_lib

RESULTS_FILE = 'word2vec_results.json'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) word vectors in `workdir`; returns the results."""
  run = trainer.Run.start(config, workdir, validate=defaults.validate)
  config = run.config

  started = time.monotonic()
  vocab, ids = corpus.build(config.corpus, config.min_count, workdir)
  keep = vocab_lib.keep_probabilities(vocab.counts, config.sample)
  stream = pairs.PairStream(ids, keep, window=config.window, tokens_per_step=config.batch_size,
                            seed=config.seed, start_step=run.start_step,
                            process_index=jax.process_index(), process_count=jax.process_count(),
                            substeps=config.substeps)
  total_steps = config.total_steps or config.num_epochs * stream.steps_per_epoch
  logging.info('Vocabulary %d words (min_count %d) of %d raw words; %d ids per epoch in %d '
               'steps; read in %.1fs.', vocab.size, config.min_count, vocab.raw_words, len(ids),
               stream.steps_per_epoch, time.monotonic() - started)

  state = run.init_or_resume(
      lambda: sgns.init_tables(vocab.size, config.vector_size, config.seed, run.mesh),
      stream, total_steps)
  update = sgns.make_update(
      sg=bool(config.sg), negative=config.negative,
      noise=vocab_lib.noise_distribution(vocab.counts, config.ns_exponent),
      alpha=config.alpha, min_alpha=config.min_alpha, total_steps=total_steps,
      seed=config.seed, mesh=run.mesh, skip_nonfinite=config.nan_policy == 'skip_step',
      row_update_cap=config.row_update_cap, kernel=config.update_kernel,
      threads=config.kernel_threads, window=config.window, substeps=config.substeps)
  raw_per_step = vocab.raw_words / stream.steps_per_epoch
  logging.info('word2vec (%s) for %d steps, %d words each in %d substeps, on %d devices (%s '
               'update).', 'skip-gram' if config.sg else 'CBOW', total_steps, config.batch_size,
               config.substeps, jax.device_count(), 'fused CPU kernel' if sgns.use_cpu_kernel(
                   config.update_kernel, config.nan_policy == 'skip_step') else 'XLA')
  start_step = run.start_step
  state, step = run.train(state, update, stream, total_steps=total_steps,
                          progress_keys=('loss', 'lr'), items_per_step=raw_per_step,
                          unit='words')

  results: dict[str, Any] = {'step': step, 'preempted': run.preempted, **run.last_metrics,
                             'vocab_size': vocab.size, 'raw_words_per_epoch': vocab.raw_words}
  if run.train_seconds > 0 and step > start_step:
    results['raw_words_per_sec'] = (step - start_step) * raw_per_step / run.train_seconds
    results['effective_words_per_sec'] = stream.effective_words / run.train_seconds
  if run.finished(step, total_steps):
    table = np.asarray(jax.device_get(state['w_in']))
    if jax.process_index() == 0:
      vectors.save(workdir, vocab.words, table)
    for word, near in evaluate.neighbours(vocab.words, table, config.eval.probes).items():
      logging.info('nearest to %s: %s', word, ', '.join(near))
      results[f'neighbours_{word}'] = near
    if config.eval.intrinsic:
      try:
        results.update(evaluate.intrinsic(vocab.words, table, config.eval.restrict_vocab))
        trainer.print_results(
            'WS353 {ws353_spearman:.3f} | SimLex-999 {simlex999_spearman:.3f} | analogies '
            '{analogy_accuracy:.4f} (OOV {analogy_oov_rate:.2f})'.format(**results))
      except ImportError as e:
        logging.warning('No intrinsic evaluation: %s', e)
    run.write_results(RESULTS_FILE, step, results, ('_spearman', '_accuracy'))
  run.close()
  return results
