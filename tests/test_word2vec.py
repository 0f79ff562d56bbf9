"""word2vec: subsampling, noise, the SGNS loss / gradient / scatter update against
float64 NumPy, the examples of a step, 1 = 8 devices, exact resume, the saved
vectors in gensim, the evaluation against gensim's, and planted structure learnt."""

import os
import string
import subprocess
import sys

import jax
import numpy as np
import pytest

from contrastive_jax import load_word_vectors, parallel
from contrastive_jax.word2vec import evaluate, pairs, sgns, train, vocab as vocab_lib
from tests.helpers import load_config

TOPICS, TOPIC_WORDS = 10, 4


def _word(i: int, prefix: str) -> str:
  letters = string.ascii_lowercase
  return prefix + letters[i // 26] + letters[i % 26]


def _planted_corpus(path: str, sentences: int = 3000, seed: int = 0) -> list[list[str]]:
  """Each sentence draws 6 words from one topic's 4 and 4 from 100 fillers:
  words of a topic share their contexts, so they should end up neighbours."""
  rng = np.random.default_rng(seed)
  topics = [[_word(t * TOPIC_WORDS + k, 'top') for k in range(TOPIC_WORDS)] for t in range(TOPICS)]
  fillers = [_word(i, 'fil') for i in range(100)]
  lines = []
  for _ in range(sentences):
    t = rng.integers(TOPICS)
    words = list(rng.choice(topics[t], 6)) + list(rng.choice(fillers, 4))
    rng.shuffle(words)
    lines.append(' '.join(words))
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return topics


def _tiny(corpus_path: str, **overrides):
  config = load_config('word2vec', 'tiny')
  config.corpus.path = corpus_path
  for k, v in overrides.items():
    config[k] = v
  return config


# --- subsampling and the noise distribution -------------------------------------------

def test_keep_probabilities_match_the_formula():
  counts = np.array([100_000, 20_000, 3_000, 50, 1], np.int64)
  sample = 1e-3
  t = sample * counts.sum()
  want = np.minimum(1.0, (np.sqrt(counts / t) + 1) * t / counts)
  np.testing.assert_allclose(vocab_lib.keep_probabilities(counts, sample), want, rtol=1e-12)
  assert want[0] < 0.2 and want[-1] == 1.0
  np.testing.assert_array_equal(vocab_lib.keep_probabilities(counts, 0.0), 1.0)
  # The stream keeps each word at that rate.
  ids = np.repeat(np.arange(5, dtype=np.int32), 20_000)
  keep = np.array([0.1, 0.5, 0.9, 1.0, 1.0])
  stream = pairs.PairStream(ids, keep, window=2, tokens_per_step=len(ids), seed=3)
  kept = stream._kept_words(0)[0]  # pylint: disable=protected-access
  rate = np.bincount(kept, minlength=5) / 20_000
  np.testing.assert_allclose(rate, keep, atol=4 * np.sqrt(0.25 / 20_000))


def test_noise_distribution_and_sampling_match_the_formula():
  counts = np.array([1000, 300, 100, 10, 1], np.int64)
  probs = vocab_lib.noise_distribution(counts, 0.75)
  np.testing.assert_allclose(probs, counts ** 0.75 / np.sum(counts ** 0.75), rtol=1e-12)
  n = 400_000
  draws = sgns.sample_negatives(jax.random.PRNGKey(0),
                                np.cumsum(probs).astype(np.float32), (n,))
  freq = np.bincount(np.asarray(draws), minlength=5) / n
  assert np.all(np.abs(freq - probs) <= 4 * np.sqrt(probs * (1 - probs) / n) + 1e-6), (freq, probs)


# --- the loss, its gradient, the scatter update ---------------------------------------

def _loss_and_grads_f64(u, v, w):
  """SGNS in float64: loss, d/du, d/dv (analytic)."""
  logits = np.einsum('pd,pkd->pk', u, v)
  sign = np.concatenate([[1.0], -np.ones(v.shape[1] - 1)])
  loss = -np.sum(w * np.log(1 / (1 + np.exp(-sign * logits))))
  coef = -w * sign * (1 - 1 / (1 + np.exp(-sign * logits)))    # d loss / d logits
  return loss, np.einsum('pk,pkd->pd', coef, v), coef[..., None] * u[:, None, :]


def test_sgns_loss_and_gradient_match_float64_numpy():
  rng = np.random.default_rng(0)
  u, v = rng.normal(size=(7, 6)) * 0.7, rng.normal(size=(7, 4, 6)) * 0.7
  w = (rng.random((7, 4)) > 0.2).astype(np.float64)
  loss, (gu, gv) = jax.value_and_grad(sgns.sgns_loss, argnums=(0, 1))(
      u.astype(np.float32), v.astype(np.float32), w.astype(np.float32))
  want_loss, want_gu, want_gv = _loss_and_grads_f64(u, v, w)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(gu), want_gu, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gv), want_gv, rtol=1e-4, atol=1e-6)


def _update_f64(w_in, w_out, inp, out, neg, lr):
  """One skip-gram step in float64: every pair's gradient at the old tables,
  summed into the rows (repeated rows add up)."""
  new_in, new_out = w_in.copy(), w_out.copy()
  for i, o in zip(inp, out):
    targets = [o, neg]
    weight = np.array([[1.0, float(neg != o)]])
    _, gu, gv = _loss_and_grads_f64(w_in[i][None], w_out[targets][None], weight)
    new_in[i] -= lr * gu[0]
    for k, row in enumerate(targets):
      new_out[row] -= lr * gv[0, k]
  return new_in, new_out


@pytest.mark.parametrize('kernel', ['xla', 'cpu'])
def test_update_sums_repeated_rows_like_float64_numpy(kernel):
  mesh = parallel.make_mesh(jax.devices()[:1])
  num_words, dim, noise_word = 6, 4, 5
  noise = np.eye(num_words)[noise_word]         # every negative is word 5
  state = sgns.init_tables(num_words, dim, seed=0, mesh=mesh)
  rng = np.random.default_rng(1)
  w_out = rng.normal(size=(num_words, dim)).astype(np.float32) * 0.3
  state['w_out'] = parallel.replicate(w_out, mesh)
  w_in = np.asarray(state['w_in'], np.float64)
  inp = np.array([3, 3, 3, 1, 0, 0, 2, 4], np.int32)   # rows 3 and 0 repeated
  out = np.array([1, 2, 1, 5, 3, 3, 0, 2], np.int32)   # row 1 and 3 repeated; 5 = the noise word
  mask = np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)  # the last row is padding
  update = sgns.make_update(sg=True, negative=1, noise=noise, alpha=0.5, min_alpha=0.5,
                            total_steps=10, seed=0, mesh=mesh, kernel=kernel)
  batch = parallel.global_batch({'inp': inp, 'out': out, 'mask': mask}, mesh)
  state, metrics = update(state, batch)
  want_in, want_out = _update_f64(w_in, w_out.astype(np.float64), inp[:7], out[:7], noise_word,
                                  0.5)
  np.testing.assert_allclose(np.asarray(state['w_in']), want_in, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(state['w_out']), want_out, rtol=1e-5, atol=1e-6)
  assert float(metrics['examples']) == 7 and int(state['step']) == 1


@pytest.mark.parametrize('kernel', ['xla', 'cpu'])
def test_substeps_apply_their_blocks_one_after_the_other(kernel):
  """make_update(substeps=3) on one batch = three plain steps on its three
  blocks in turn (one noise word and a constant rate make the steps' draws
  and rates equal), and differs from the one summed update."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  num_words, noise_word = 12, 11
  noise = np.eye(num_words)[noise_word]
  rng = np.random.default_rng(2)
  batch = {'inp': rng.integers(0, 11, 96).astype(np.int32),
           'out': rng.integers(0, 11, 96).astype(np.int32),
           'mask': (rng.random(96) < 0.8).astype(np.float32)}
  kw = dict(sg=True, negative=2, noise=noise, alpha=0.3, min_alpha=0.3, total_steps=10, seed=0,
            mesh=mesh, kernel=kernel, row_update_cap=3.0)

  def start():
    state = sgns.init_tables(num_words, 8, seed=0, mesh=mesh)
    state['w_out'] = parallel.replicate(rng.normal(size=(num_words, 8)).astype(np.float32), mesh)
    return state

  first = start()
  w_out0 = np.asarray(first['w_out'])
  fresh = lambda: {**start(), 'w_out': parallel.replicate(w_out0, mesh)}
  sub, _ = sgns.make_update(substeps=3, **kw)(first, parallel.global_batch(batch, mesh))
  seq, whole = fresh(), fresh()
  plain = sgns.make_update(**kw)
  for b in range(3):
    block = {k: v[32 * b:32 * (b + 1)] for k, v in batch.items()}
    seq, _ = plain(seq, parallel.global_batch(block, mesh))
  whole, _ = plain(whole, parallel.global_batch(batch, mesh))
  for k in ('w_in', 'w_out'):
    np.testing.assert_allclose(np.asarray(sub[k]), np.asarray(seq[k]), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(sub[k]) - np.asarray(whole[k])).max() > 1e-3
  with pytest.raises(ValueError, match='substeps=5'):
    sgns.make_update(substeps=5, **kw)(fresh(), parallel.global_batch(batch, mesh))


def test_row_scale_caps_rows_hit_more_than_cap_times():
  idx = np.array([0, 0, 0, 0, 1, 2, 2])
  scale = sgns.row_scale(idx, np.ones(7, np.float32), 3, cap=2.0)
  np.testing.assert_allclose(np.asarray(scale), [0.5] * 4 + [1.0, 1.0, 1.0])
  np.testing.assert_array_equal(np.asarray(sgns.row_scale(idx, np.ones(7), 3, cap=0.0)), 1.0)


# --- the examples of a step -----------------------------------------------------------

def test_skipgram_pairs_stay_in_sentences_and_windows():
  # Sentences 0 1 2 3 | 4 5 6: every id is its position, so offsets are readable.
  ids = np.array([0, 1, 2, 3, -1, 4, 5, 6, -1], np.int32)
  stream = pairs.PairStream(ids, np.ones(7), window=2, tokens_per_step=len(ids), seed=0)
  ex = stream.examples(0)
  sentence = np.array([0, 0, 0, 0, 1, 1, 1])
  assert np.all(sentence[ex['inp']] == sentence[ex['out']])
  assert np.all(np.abs(ex['inp'] - ex['out']).astype(int) <= 2) and np.all(ex['inp'] != ex['out'])
  window1 = pairs.PairStream(ids, np.ones(7), window=1, tokens_per_step=len(ids),
                             seed=0).examples(0)
  got = sorted(zip(window1['inp'].tolist(), window1['out'].tolist()))
  assert got == sorted([(1, 0), (0, 1), (2, 1), (1, 2), (3, 2), (2, 3), (5, 4), (4, 5), (6, 5),
                        (5, 6)])
  # The dynamic window: over many steps each word sees offsets 1..window, uniformly.
  big = pairs.PairStream(np.arange(5000, dtype=np.int32), np.ones(5000), window=4,
                         tokens_per_step=5000, seed=0).examples(0)
  offsets = np.bincount(np.abs(big['inp'] - big['out']), minlength=5)[1:]
  np.testing.assert_allclose(offsets / offsets[0], [1, 3 / 4, 2 / 4, 1 / 4], atol=0.04)
  # A pure function of (seed, step); batches padded to the rows.
  b1, b2 = stream.batch(0), stream.batch(0)
  assert all(np.array_equal(b1[k], b2[k]) for k in b1) and b1['ids'].shape == (512,)


def test_examples_expand_the_same_on_eight_devices_as_on_the_host():
  """pairs.expand in a jitted step over a batch split across 8 devices (the
  windows reach across the devices' rows) gives the host's examples, for
  skip-gram and CBOW, and the examples are exactly the (context, centre)
  pairs of a direct loop over the kept words."""
  import jax.numpy as jnp   # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 30, 3000).astype(np.int32)
  ids[rng.random(3000) < 0.1] = -1
  counts = np.bincount(ids[ids >= 0], minlength=30)
  stream = pairs.PairStream(ids, vocab_lib.keep_probabilities(counts, 1e-2), window=3,
                            tokens_per_step=1000, seed=0)
  mesh = parallel.make_mesh(jax.devices())
  for sg in (True, False):
    host = stream.examples(2, sg=sg)
    batch = parallel.global_batch(stream.batch(2), mesh)
    dev = jax.jit(lambda b, sg=sg: pairs.expand(b['ids'], b['left'], b['right'], window=3,
                                                 sg=sg, xp=jnp))(batch)
    keep = np.asarray(dev.pop('mask')) > 0
    for k, v in host.items():
      np.testing.assert_array_equal(np.asarray(dev[k])[keep], v)
  # The reference: kept words, their sentences and windows, by a plain loop.
  w, sent, _, step_rng = stream._kept_words(2)  # pylint: disable=protected-access
  b = step_rng.integers(1, 4, size=len(w))
  want = [(w[j], w[i]) for i in range(len(w)) for j in range(i - b[i], i + b[i] + 1)
          if j != i and 0 <= j < len(w) and sent[j] == sent[i]]
  got = stream.examples(2)
  assert list(zip(got['inp'].tolist(), got['out'].tolist())) == [(int(a), int(c)) for a, c in want]


def test_substeps_lay_out_their_sub_chunks_in_blocks():
  """PairStream(substeps=4): sub-chunk b's kept words fill block b of the
  rows, windows stop at sub-chunk edges as at sentence ends (a direct loop),
  the chunk's subsampling and windows are those of substeps=1, and a
  checkpoint of another substeps is refused."""
  rng = np.random.default_rng(3)
  ids = rng.integers(0, 40, 5000).astype(np.int32)
  ids[rng.random(5000) < 0.05] = -1
  keep = np.full(40, 0.7)
  kw = dict(window=3, tokens_per_step=2000, seed=0)
  one, four = pairs.PairStream(ids, keep, **kw), pairs.PairStream(ids, keep, substeps=4, **kw)
  assert four.rows == 2048 and four.block_rows == 512
  c1, c4 = one.centres(1), four.centres(1)
  np.testing.assert_array_equal(c1['ids'], c4['ids'])
  batch = four.batch(1)
  for b in range(4):
    rows = batch['ids'][512 * b:512 * (b + 1)]
    np.testing.assert_array_equal(rows[rows >= 0], c4['ids'][c4['block'] == b])
    assert np.all(rows[(rows >= 0).sum():] == -1)
  w, sent, block, step_rng = four._kept_words(1)  # pylint: disable=protected-access
  assert np.all(np.diff(block) >= 0) and set(block.tolist()) == {0, 1, 2, 3}
  reach = step_rng.integers(1, 4, size=len(w))
  want = [(w[j], w[i]) for i in range(len(w)) for j in range(i - reach[i], i + reach[i] + 1)
          if j != i and 0 <= j < len(w) and sent[j] == sent[i] and block[j] == block[i]]
  ex = pairs.expand(batch['ids'], batch['left'], batch['right'], window=3, sg=True)
  live = ex['mask'] > 0
  assert list(zip(ex['inp'][live].tolist(), ex['out'][live].tolist())) == [
      (int(a), int(c)) for a, c in want]
  assert len(want) < len(one.examples(1)['inp'])        # the edges cut a few pairs
  with pytest.raises(ValueError, match='substeps'):
    four.restore(one.state())


def test_processes_split_a_steps_rows():
  ids = np.arange(2000, dtype=np.int32) % 50
  kw = dict(window=2, tokens_per_step=1000, seed=0)
  whole = pairs.PairStream(ids, np.full(50, 0.7), **kw).batch(1)
  parts = [pairs.PairStream(ids, np.full(50, 0.7), process_index=i, process_count=2, **kw).batch(1)
           for i in range(2)]
  for k, v in whole.items():
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), v)
  with pytest.raises(ValueError, match='processes'):
    pairs.PairStream(ids, np.ones(50), process_count=3, **kw)


# --- devices, the binary, resume, gensim ----------------------------------------------

def _train_steps(devices, batches, noise, sg=True, cap=4.0, alpha=0.025, window=3, substeps=1,
                 **kernel):
  mesh = parallel.make_mesh(devices)
  state = sgns.init_tables(len(noise), 8, seed=0, mesh=mesh)
  update = sgns.make_update(sg=sg, negative=3, noise=noise, alpha=alpha, min_alpha=1e-4,
                            total_steps=len(batches), seed=0, mesh=mesh, row_update_cap=cap,
                            window=window, substeps=substeps, **kernel)
  for b in batches:
    state, _ = update(state, parallel.global_batch(b, mesh))
  return np.asarray(state['w_in']), np.asarray(state['w_out'])


@pytest.mark.parametrize('substeps', [1, 4])
def test_one_and_eight_devices_give_the_same_vectors(substeps):
  assert jax.device_count() == 8, 'conftest.py sets 8 CPU devices'
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 50, 6000).astype(np.int32)
  counts = np.bincount(ids, minlength=50)
  stream = pairs.PairStream(ids, vocab_lib.keep_probabilities(counts, 1e-2), window=3,
                            tokens_per_step=1000, seed=0, substeps=substeps)
  batches = [stream.batch(s) for s in range(6)]
  noise = vocab_lib.noise_distribution(counts, 0.75)
  one = _train_steps(jax.devices()[:1], batches, noise, substeps=substeps)
  eight = _train_steps(jax.devices(), batches, noise, substeps=substeps)
  for a, b in zip(one, eight):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert np.abs(one[1]).max() > 0


@pytest.mark.parametrize('sg,cap,alpha,substeps', [(True, 4.0, 0.1, 1), (True, 0.0, 0.01, 1),
                                                   (False, 4.0, 0.1, 1), (True, 4.0, 0.1, 3),
                                                   (False, 4.0, 0.1, 2)])
def test_fused_cpu_kernel_computes_the_xla_update(sg, cap, alpha, substeps):
  """kernels/sgns_update.cc against the XLA update over several steps (alpha
  as large as keeps 40 words' rows, each hit hundreds of times a step, from
  diverging), and the same bits for 1 and 3 threads (each row's updates are
  applied in example order)."""
  rng = np.random.default_rng(1)
  ids = rng.integers(0, 40, 4000).astype(np.int32)
  ids[rng.random(4000) < 0.05] = -1                        # sentence breaks
  counts = np.bincount(ids[ids >= 0], minlength=40)
  stream = pairs.PairStream(ids, vocab_lib.keep_probabilities(counts, 1e-2), window=3,
                            tokens_per_step=800, seed=0, substeps=substeps)
  batches = [stream.batch(s) for s in range(5)]
  noise = vocab_lib.noise_distribution(counts, 0.75)
  device = jax.devices()[:1]
  run = lambda **kw: _train_steps(device, batches, noise, sg=sg, cap=cap, alpha=alpha,
                                  substeps=substeps, **kw)
  xla, one, three = run(kernel='xla'), run(kernel='cpu', threads=1), run(kernel='cpu', threads=3)
  init = _train_steps(device, [], noise)
  for a, b, c, start in zip(xla, one, three, init):
    assert 1e-3 < np.abs(a - start).max() < 1.0        # moved, and not diverged
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(b, c)


def test_fused_kernel_draws_the_noise_words_of_searchsorted():
  """The kernel's bucketed inverse-CDF draw equals jnp.searchsorted(cum, u,
  'right') (clipped to V - 1) on draws placed at the hard spots: on cum's
  values and one float away, on bucket edges j / M and one float away, 0, and
  just below 1. Read back through the update: with w_out = 0, u = 1 (D = 1)
  and no cap, a noise word's row moves by -lr / 2 per draw."""
  from contrastive_jax.kernels import sgns_update as sgns_kernel
  rng = np.random.default_rng(0)
  probs = np.concatenate([rng.random(37) ** 4, [0.0, 0.5, 0.0]])  # skewed; zeros; the last
  probs[-1] = 0.0                                                 # word (the output) never drawn
  cum = np.cumsum(probs / probs.sum()).astype(np.float32)
  index = sgns_kernel.noise_index(cum)
  m = len(index) - 1
  spots = np.concatenate([cum, np.arange(m + 1) / m, [0.0, 1.0]]).astype(np.float32)
  u = np.concatenate([spots, np.nextafter(spots, 0), np.nextafter(spots, 1),
                      rng.random(500)]).astype(np.float32)
  u = u[(u >= 0) & (u < 1)]
  u = np.concatenate([u, np.zeros((-len(u)) % 5, np.float32)]).reshape(-1, 5)
  p_, v = len(u), len(cum)
  want = np.minimum(np.searchsorted(cum, u.ravel(), side='right'), v - 1)
  lr = 0.125
  _, w_out, _ = jax.jit(lambda *a: sgns_kernel.sgns_update(*a, cap=0.0, threads=2))(
      np.ones((v, 1), np.float32), np.zeros((v, 1), np.float32), np.zeros((p_, 1), np.int32),
      np.ones((p_, 1), np.float32), np.full(p_, v - 1, np.int32), np.ones(p_, np.float32), u,
      cum, index, np.float32(lr))
  got = -np.asarray(w_out)[:-1, 0] / (lr / 2)
  np.testing.assert_allclose(got, np.bincount(want, minlength=v)[:-1], atol=1e-3)


def test_update_kernel_choice():
  assert not sgns.use_cpu_kernel('xla')
  assert not sgns.use_cpu_kernel('auto')        # 8 CPU devices here: a custom call is not split
  assert sgns.use_cpu_kernel('cpu')
  with pytest.raises(ValueError, match='skip a step'):
    sgns.use_cpu_kernel('cpu', skip_nonfinite=True)
  with pytest.raises(ValueError, match="update_kernel='gpu'"):
    sgns.use_cpu_kernel('gpu')


@pytest.fixture(scope='module')
def planted(tmp_path_factory):
  """The tiny config trained on the planted corpus, once: (workdir, topics, corpus path)."""
  root = tmp_path_factory.mktemp('w2v')
  corpus_path = str(root / 'corpus.txt')
  topics = _planted_corpus(corpus_path)
  workdir = str(root / 'run')
  results = train.train_and_evaluate(_tiny(corpus_path), workdir)
  return workdir, topics, corpus_path, results


def test_planted_topic_words_are_nearest_neighbours(planted):
  workdir, topics, _, results = planted
  words, table = load_word_vectors(workdir)
  hits = 0
  for topic in topics:
    for w in topic:
      near = evaluate.neighbours(words, table, [w], k=1)[w][0]
      hits += near in topic
  assert hits >= 0.95 * TOPICS * TOPIC_WORDS, hits
  assert results['raw_words_per_sec'] > 0


def test_resume_is_exact(planted, tmp_path):
  workdir, _, corpus_path, _ = planted
  chunked = str(tmp_path / 'chunked')
  first = train.train_and_evaluate(_tiny(corpus_path, stop_at_step=20), chunked)
  assert first['step'] == 20 and not os.path.exists(os.path.join(chunked, 'vectors.bin'))
  train.train_and_evaluate(_tiny(corpus_path), chunked)
  _, resumed = load_word_vectors(chunked)
  _, straight = load_word_vectors(workdir)
  np.testing.assert_array_equal(resumed, straight)


def test_binary_on_one_cpu_device_runs_the_fused_kernel_and_resumes(planted, tmp_path):
  """The binary as a real process on one CPU device takes the fused kernel
  ('auto'), stops at step 20, resumes, and ends with the vectors of the
  in-process run on 8 devices (the XLA update), up to float rounding."""
  workdir, _, corpus_path, _ = planted
  run = str(tmp_path / 'fused')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  logs = ''
  for extra in (['--config.stop_at_step=20'], []):
    proc = subprocess.run(
        [sys.executable, '-m', 'contrastive_jax.word2vec',
         f'--config={os.path.join(repo, "configs", "word2vec.py")}:tiny', f'--workdir={run}',
         f'--config.corpus.path={corpus_path}', *extra],
        env=env, cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    logs += proc.stdout + proc.stderr
  assert 'fused CPU kernel update' in logs and 'Resum' in logs, logs[-3000:]
  words, fused = load_word_vectors(run)
  xla_words, xla = load_word_vectors(workdir)
  assert words == xla_words
  np.testing.assert_allclose(fused, xla, rtol=1e-3, atol=1e-4)


def test_saved_vectors_load_in_gensim(planted):
  keyed = pytest.importorskip('gensim.models').KeyedVectors
  workdir, _, _, _ = planted
  words, table = load_word_vectors(workdir)
  for name, binary in (('vectors.bin', True), ('vectors.txt', False)):
    kv = keyed.load_word2vec_format(os.path.join(workdir, name), binary=binary)
    assert list(kv.index_to_key) == words
    np.testing.assert_array_equal(kv.vectors, table)


def test_evaluation_matches_gensims():
  keyed = pytest.importorskip('gensim.models').KeyedVectors
  words = []
  for name in ('ws353', 'simlex999', 'analogy'):
    for line in open(evaluate.benchmark_path(name)):
      if not line.startswith((':', '#')):
        words += [w.lower() for w in line.replace('\t', ' ').split()[:(2 if name != 'analogy' else 4)]]
  words = list(dict.fromkeys(words))[:900]      # leaves some pairs and questions OOV
  table = np.random.default_rng(0).normal(size=(len(words), 20)).astype(np.float32)
  kv = keyed(20)
  kv.add_vectors(words, table)
  for name in ('ws353', 'simlex999'):
    ours = evaluate.word_similarity(words, table, evaluate.benchmark_path(name))
    _, spearman, oov = kv.evaluate_word_pairs(evaluate.benchmark_path(name))
    np.testing.assert_allclose(ours['spearman'], spearman[0], atol=1e-6)
    np.testing.assert_allclose(100 * ours['oov_rate'], oov, atol=1e-6)
  ours = evaluate.analogies(words, table, evaluate.benchmark_path('analogy'), restrict_vocab=500)
  theirs, _ = kv.evaluate_word_analogies(evaluate.benchmark_path('analogy'), restrict_vocab=500)
  np.testing.assert_allclose(ours['accuracy'], theirs, atol=1e-9)


@pytest.mark.slow
def test_cbow_learns_the_planted_topics(planted, tmp_path):
  _, topics, corpus_path, _ = planted
  train.train_and_evaluate(_tiny(corpus_path, sg=0, num_epochs=6), str(tmp_path / 'cbow'))
  words, table = load_word_vectors(str(tmp_path / 'cbow'))
  hits = sum(evaluate.neighbours(words, table, [w], k=1)[w][0] in topic
             for topic in topics for w in topic)
  assert hits >= 0.9 * TOPICS * TOPIC_WORDS, hits
