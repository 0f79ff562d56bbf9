"""Probes on frozen features: kNN against NumPy, linear probe against sklearn/optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from contrastive_jax import probes


# ---------------------------------------------------------------------------
# kNN.

def _knn_reference(train_x, train_y, test_x, num_classes, k, temperature):
  """Straight NumPy (float64): Wu et al. / solo-learn weighted kNN votes."""
  def norm(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  bank, queries = norm(train_x), norm(test_x)
  k = min(k, len(bank))
  scores = np.zeros((len(queries), num_classes))
  for i, q in enumerate(queries):
    sims = bank @ q
    nearest = np.argsort(-sims, kind='stable')[:k]
    for j in nearest:
      scores[i, train_y[j]] += np.exp(sims[j] / temperature)
  return scores


def _topk_reference(scores, labels, k):
  order = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  return np.mean([labels[i] in order[i] for i in range(len(labels))])


def test_knn_matches_numpy_reference():
  rng = np.random.default_rng(0)
  num_classes = 7
  train_x = rng.normal(size=(300, 12)).astype(np.float32)
  train_y = rng.integers(0, num_classes, 300)
  test_x = rng.normal(size=(53, 12)).astype(np.float32)   # 53: chunks get padded
  test_y = rng.integers(0, num_classes, 53)
  ks = (1, 20, 200, 1000)                                  # 1000 > N: clipped to 300
  scores = np.asarray(probes.knn_scores(train_x, train_y, test_x, num_classes=num_classes,
                                        ks=ks, temperature=0.07, chunk_size=16))
  assert scores.shape == (len(ks), 53, num_classes)
  results = probes.knn_evaluate(train_x, train_y, test_x, test_y, num_classes=num_classes,
                                ks=ks, temperature=0.07, chunk_size=16)
  for i, k in enumerate(ks):
    ref = _knn_reference(train_x, train_y, test_x, num_classes, k, 0.07)
    np.testing.assert_allclose(scores[i], ref, rtol=2e-4, atol=1e-30)
    np.testing.assert_array_equal(scores[i].argmax(1), ref.argmax(1))  # same predictions
    assert results[f'knn_k{k}_top1'] == pytest.approx(_topk_reference(ref, test_y, 1))
    assert results[f'knn_k{k}_top5'] == pytest.approx(_topk_reference(ref, test_y, 5))
  # k = 1 votes for the single nearest neighbour's label.
  nearest = np.argmax(np.asarray(probes.l2_normalize(test_x))
                      @ np.asarray(probes.l2_normalize(train_x)).T, 1)
  np.testing.assert_array_equal(scores[0].argmax(1), train_y[nearest])


def test_knn_protocol_chooses_feature_norm_on_val_and_matches_numpy():
  # Class means differ by 1 in 6 dims; 3 noise dims with std 20 dominate raw
  # cosine similarity, standardising removes that.
  rng = np.random.default_rng(3)

  def split(n):
    y = rng.integers(0, 3, n)
    x = np.concatenate([np.eye(3)[y].repeat(2, 1) + 0.3 * rng.normal(size=(n, 6)),
                        20 * rng.normal(size=(n, 3))], 1)
    return x.astype(np.float32), y
  train, val, test = split(150), split(60), split(60)
  kw = dict(num_classes=3, ks=(5, 20), temperature=0.1, chunk_size=16)
  out = probes.knn_protocol(train, val, test, feature_norm='none,standardize', **kw)
  grid = {g['feature_norm']: g['val_top1'] for g in out['knn_grid']}
  assert list(grid) == ['none', 'standardize']
  assert grid['standardize'] > grid['none'] + 0.2
  assert out['knn_feature_norm'] == 'standardize'
  # Val scores: train as the bank, standardised with train statistics.
  mean, std = train[0].mean(0), train[0].std(0) + 1e-6
  ref = _knn_reference((train[0] - mean) / std, train[1], (val[0] - mean) / std, 3, 5, 0.1)
  assert grid['standardize'] == pytest.approx(_topk_reference(ref, val[1], 1))
  # Test figures: train + val as the bank, its own statistics.
  bank_x, bank_y = np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]])
  mean, std = bank_x.mean(0), bank_x.std(0) + 1e-6
  for k in (5, 20):
    ref = _knn_reference((bank_x - mean) / std, bank_y, (test[0] - mean) / std, 3, k, 0.1)
    assert out[f'knn_k{k}_top1'] == pytest.approx(_topk_reference(ref, test[1], 1))
  # One norm: no choice; no val: bank = train only.
  alone = probes.knn_protocol(train, None, test, feature_norm='none', **kw)
  ref = _knn_reference(train[0], train[1], test[0], 3, 20, 0.1)
  assert alone['knn_k20_top1'] == pytest.approx(_topk_reference(ref, test[1], 1))
  assert 'knn_grid' not in alone and alone['knn_feature_norm'] == 'none'
  with pytest.raises(ValueError, match='no validation split'):
    probes.knn_protocol(train, None, test, feature_norm='none,standardize', **kw)


def test_knn_chunking_does_not_change_scores():
  rng = np.random.default_rng(1)
  train_x, test_x = rng.normal(size=(64, 5)), rng.normal(size=(20, 5))
  train_y = rng.integers(0, 3, 64)
  kw = dict(num_classes=3, ks=(5, 20), temperature=0.1)
  a = probes.knn_scores(train_x, train_y, test_x, chunk_size=3, **kw)
  b = probes.knn_scores(train_x, train_y, test_x, chunk_size=1000, **kw)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_knn_on_clustered_features_is_perfect():
  rng = np.random.default_rng(2)
  centers = rng.normal(size=(4, 16)) * 5
  y_train, y_test = np.repeat(np.arange(4), 50), np.repeat(np.arange(4), 10)
  x_train = centers[y_train] + rng.normal(size=(200, 16))
  x_test = centers[y_test] + rng.normal(size=(40, 16))
  out = probes.knn_evaluate(x_train, y_train, x_test, y_test, num_classes=4, ks=(20,),
                            temperature=0.07)
  assert out == {'knn_k20_top1': 1.0, 'knn_k20_top5': 1.0}


# ---------------------------------------------------------------------------
# Accuracy helpers.

def test_topk_accuracy_ties_and_small_class_counts():
  scores = jnp.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
  labels = jnp.array([1, 2, 0])
  acc = probes.topk_accuracy(scores, labels, (1, 2, 5))
  # Row 0: a tie between classes 0 and 1 goes to class 0 (lower index): wrong.
  assert acc[1] == pytest.approx(1 / 3)
  assert acc[2] == pytest.approx(1.0)
  assert acc[5] == 1.0  # k > C: every label is in the top 5 of 3 classes


def test_normalize_features():
  rng = np.random.default_rng(0)
  train, other = rng.normal(3.0, 2.0, (100, 4)), rng.normal(size=(10, 4))
  t, (o,) = probes.normalize_features(train, [other], 'standardize')
  np.testing.assert_allclose(t.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(t.std(0), 1, atol=1e-3)
  np.testing.assert_allclose(o, (other - train.mean(0)) / (train.std(0) + 1e-6), rtol=1e-5)
  t, (o,) = probes.normalize_features(train, [other], 'l2')
  np.testing.assert_allclose(np.linalg.norm(o, axis=1), 1, rtol=1e-5)
  assert probes.normalize_features(train, [other], 'none')[0] is train
  with pytest.raises(ValueError, match='config.linear.feature_norm'):
    probes.normalize_features(train, [other], 'bn')


# ---------------------------------------------------------------------------
# Linear probe.

def _blobs(rng, *n_per_class, num_classes=3, dim=10, spread=0.5):
  """(features, labels) splits of Gaussian blobs around shared class centres."""
  centers = rng.normal(size=(num_classes, dim)) * 3
  splits = []
  for n in n_per_class:
    y = np.repeat(np.arange(num_classes), n)
    x = centers[y] + spread * rng.normal(size=(len(y), dim))
    perm = rng.permutation(len(y))
    splits.append((x[perm].astype(np.float32), y[perm]))
  return splits if len(splits) > 1 else splits[0]


def test_linear_probe_separable_features_reach_100_percent():
  rng = np.random.default_rng(0)
  (xtr, ytr), (xva, yva), (xte, yte) = _blobs(rng, 100, 20, 40)
  out = probes.linear_protocol((xtr, ytr), (xva, yva), (xte, yte), num_classes=3,
                               base_learning_rates=(0.1, 1.0), weight_decays=(0.0,),
                               lr_scaling='linear', epochs=10, batch_size=32,
                               optimizer='sgd', momentum=0.9)
  assert out['linear_top1'] == 1.0
  assert out['linear_balanced_acc'] == 1.0
  assert out['linear_val_top1'] == 1.0
  assert out['linear_top5'] == 1.0
  assert out['linear_train_examples'] == 360  # retrained on train + val


def _sgd_reference(x, y, num_classes, *, lr, wd, epochs, batch_size, seed, momentum):
  """The probe with plain optax: sgd(lr x cosine) + L2 on the kernel, same batches."""
  n, d = x.shape
  spe = n // batch_size
  schedule = optax.cosine_decay_schedule(lr, epochs * spe)
  tx = optax.sgd(schedule, momentum=momentum)
  params = {'kernel': jnp.zeros((d, num_classes)), 'bias': jnp.zeros((num_classes,))}
  state = tx.init(params)

  def loss(p, xb, yb):
    logp = jax.nn.log_softmax(xb @ p['kernel'] + p['bias'])
    return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], 1)) + 0.5 * wd * jnp.sum(
        p['kernel'] ** 2)

  @jax.jit
  def step(params, state, idx):
    grads = jax.grad(loss)(params, x[idx], y[idx])
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  key = jax.random.PRNGKey(seed)
  for e in range(epochs):
    order = jax.random.permutation(jax.random.fold_in(key, e), n)[:spe * batch_size]
    for idx in order.reshape(spe, batch_size):
      params, state = step(params, state, idx)
  return params


def test_fit_linear_equals_plain_optax_sgd_and_grid_points_are_independent():
  rng = np.random.default_rng(3)
  x, y = _blobs(rng, 16, num_classes=3, dim=5, spread=3.0)
  kw = dict(num_classes=3, epochs=3, batch_size=10, optimizer='sgd', momentum=0.9, seed=7)
  grid = probes.fit_linear(x, y, learning_rates=[0.5, 0.05], weight_decays=[0.1, 0.0], **kw)
  alone = probes.fit_linear(x, y, learning_rates=[0.05], weight_decays=[0.0], **kw)
  np.testing.assert_allclose(grid['kernel'][1], alone['kernel'][0], rtol=1e-5, atol=1e-6)
  for g, (lr, wd) in enumerate([(0.5, 0.1), (0.05, 0.0)]):
    ref = _sgd_reference(jnp.asarray(x), jnp.asarray(y), 3, lr=lr, wd=wd, epochs=3,
                         batch_size=10, seed=7, momentum=0.9)
    np.testing.assert_allclose(grid['kernel'][g], ref['kernel'], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grid['bias'][g], ref['bias'], rtol=1e-4, atol=1e-5)


def test_fit_linear_lars_runs_and_full_batch():
  rng = np.random.default_rng(4)
  x, y = _blobs(rng, 20)
  params = probes.fit_linear(x, y, num_classes=3, learning_rates=[1.0], weight_decays=[1e-4],
                             epochs=20, batch_size=0, optimizer='lars', momentum=0.9)
  logits = probes.linear_logits(params, jnp.asarray(x))[0]
  assert np.mean(np.asarray(logits).argmax(1) == y) == 1.0


def test_linear_probe_matches_sklearn_logistic_regression():
  sklearn = pytest.importorskip('sklearn')
  from sklearn.datasets import load_digits
  from sklearn.linear_model import LogisticRegression
  del sklearn
  x, y = load_digits(return_X_y=True)   # 1797 8x8 digits, bundled with sklearn
  x = (x / 16.0).astype(np.float32)
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = x[perm], y[perm]
  train, val, test = (x[:1000], y[:1000]), (x[1000:1300], y[1000:1300]), (x[1300:], y[1300:])
  reference = LogisticRegression(max_iter=2000).fit(
      np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]])).score(*test)
  out = probes.linear_protocol(train, val, test, num_classes=10,
                               base_learning_rates=(0.3, 3.0), weight_decays=(0.0, 1e-3),
                               lr_scaling='linear', epochs=30, batch_size=64,
                               optimizer='sgd', momentum=0.9)
  assert reference > 0.95
  assert abs(out['linear_top1'] - reference) < 0.025, (out['linear_top1'], reference)


def test_hyperparameters_are_chosen_on_val_never_on_test():
  rng = np.random.default_rng(5)
  (xtr, ytr), (xva, yva), (xte, yte) = _blobs(rng, 60, 30, 30, spread=4.0)
  kw = dict(num_classes=3, base_learning_rates=(0.01, 0.3, 3.0), weight_decays=(0.0, 0.1),
            lr_scaling='linear', epochs=4, batch_size=16, optimizer='sgd', momentum=0.9)
  a = probes.linear_protocol((xtr, ytr), (xva, yva), (xte, yte), **kw)
  # Scrambled test labels: the grid scores and the choice must not move.
  b = probes.linear_protocol((xtr, ytr), (xva, yva), (xte, rng.permutation(yte)), **kw)
  assert a['linear_grid'] == b['linear_grid']
  assert (a['linear_base_learning_rate'], a['linear_weight_decay']) == (
      b['linear_base_learning_rate'], b['linear_weight_decay'])
  # The choice is the first best val top-1 of the grid (LR-major order).
  vals = [g['val_top1'] for g in a['linear_grid']]
  best = a['linear_grid'][int(np.argmax(vals))]
  assert a['linear_val_top1'] == max(vals)
  assert (best['base_learning_rate'], best['weight_decay']) == (
      a['linear_base_learning_rate'], a['linear_weight_decay'])
  assert len(a['linear_grid']) == 6
  assert a['linear_learning_rate'] == pytest.approx(
      a['linear_base_learning_rate'] * 16 / 256)
  # Changing val labels can change the choice (it is read from val).
  c = probes.linear_protocol((xtr, ytr), (xva, (yva + 1) % 3), (xte, yte), **kw)
  assert c['linear_grid'] != a['linear_grid']


def test_diverged_grid_points_are_never_chosen():
  rng = np.random.default_rng(6)
  (xtr, ytr), (xva, yva), (xte, yte) = _blobs(rng, 40, 20, 20)
  out = probes.linear_protocol((xtr, ytr), (xva, yva), (xte, yte), num_classes=3,
                               base_learning_rates=(1e38, 0.1), weight_decays=(0.0,),
                               lr_scaling='none', epochs=3, batch_size=20,
                               optimizer='sgd', momentum=0.9)
  assert out['linear_grid'][0]['diverged']
  assert out['linear_base_learning_rate'] == 0.1


def test_grid_without_val_is_an_error_and_single_point_trains_on_train():
  rng = np.random.default_rng(7)
  train, test = _blobs(rng, 30, 10)
  with pytest.raises(ValueError, match='val_examples'):
    probes.linear_protocol(train, None, test, num_classes=3, base_learning_rates=(0.1, 1.0),
                           weight_decays=(0.0,), lr_scaling='linear', epochs=2,
                           batch_size=16, optimizer='sgd', momentum=0.9)
  out = probes.linear_protocol(train, None, test, num_classes=3, base_learning_rates=(1.0,),
                               weight_decays=(0.0,), lr_scaling='linear', epochs=5,
                               batch_size=16, optimizer='sgd', momentum=0.9)
  assert 'linear_grid' not in out and out['linear_train_examples'] == 90
  assert 0.0 <= out['linear_top1'] <= 1.0


def test_feature_norm_is_a_grid_axis_chosen_on_val():
  # Class information lives in dims scaled by 1e-3 next to one large noise dim:
  # raw SGD at these rates barely moves the informative weights, standardised
  # features separate the blobs.
  rng = np.random.default_rng(8)
  splits = _blobs(rng, 60, 30, 30, dim=4)
  scale = lambda x: np.concatenate([1e-3 * x, 100 * rng.normal(size=(len(x), 1))],
                                   1).astype(np.float32)
  (xtr, ytr), (xva, yva), (xte, yte) = [(scale(x), y) for x, y in splits]
  kw = dict(num_classes=3, base_learning_rates=(0.01, 0.1), weight_decays=(0.0,),
            lr_scaling='none', epochs=10, batch_size=30, optimizer='sgd', momentum=0.9)
  out = probes.linear_protocol((xtr, ytr), (xva, yva), (xte, yte),
                               feature_norm='none,standardize', **kw)
  grid = out['linear_grid']
  assert [g['feature_norm'] for g in grid] == ['none'] * 2 + ['standardize'] * 2
  assert [g['base_learning_rate'] for g in grid] == [0.01, 0.1] * 2
  assert out['linear_feature_norm'] == 'standardize'
  assert out['linear_val_top1'] == max(g['val_top1'] for g in grid)
  assert max(g['val_top1'] for g in grid[:2]) < 0.7 < out['linear_top1']
  # The chosen point reproduces a single-norm run with the same grid.
  alone = probes.linear_protocol((xtr, ytr), (xva, yva), (xte, yte),
                                 feature_norm='standardize', **kw)
  assert alone['linear_top1'] == out['linear_top1']
  assert [g['val_top1'] for g in alone['linear_grid']] == [g['val_top1'] for g in grid[2:]]
  with pytest.raises(ValueError, match='comma-separated'):
    probes.linear_protocol((xtr, ytr), (xva, yva), (xte, yte), feature_norm='none,bn', **kw)


def test_balanced_accuracy_is_the_mean_of_per_class_recalls():
  labels = np.array([0, 0, 0, 0, 1, 2, 2, -1])
  pred = np.array([0, 0, 0, 1, 1, 0, 2, 5])       # recalls 3/4, 1, 1/2; -1 ignored
  assert probes.balanced_accuracy(pred, labels) == pytest.approx((0.75 + 1.0 + 0.5) / 3)
  assert probes.balanced_accuracy(pred, np.full(8, -1)) == 0.0
