"""Contrastive losses: NT-Xent (SimCLR), SupCon (Khosla et al.), distillation.

Every loss works on one device or inside `jax.shard_map` over a mesh axis: with
`axis_name` set, the projections of all devices are all-gathered (gradients flow
back through the gather, as in SimCLR's TPU code) so each anchor is contrasted
with the whole global batch, and the returned values are global means,
identical on every device (valid with `out_specs=P()`).

Logits are always float32, even for bfloat16 projections: the softmax over
thousands of negatives at temperature 0.1 loses too much in bfloat16.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]
_MASK = -1e9  # excluded logits; exp(-1e9 / ...) underflows to exactly 0


def _l2_normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-24))


def _gather(x: jax.Array, axis_name: Optional[str]) -> tuple[jax.Array, jax.Array]:
  """Returns (x from every device, concatenated; offset of this device's rows)."""
  if axis_name is None:
    return x, jnp.zeros((), jnp.int32)
  offset = jax.lax.axis_index(axis_name) * x.shape[0]
  return jax.lax.all_gather(x, axis_name, tiled=True), offset


def _global_sum(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _entropy(logits: jax.Array) -> jax.Array:
  """Entropy of softmax(logits) per row."""
  logp = jax.nn.log_softmax(logits, -1)
  return -jnp.sum(jnp.exp(logp) * logp, -1)


def nt_xent(z1: jax.Array, z2: jax.Array, *, temperature: float,
            axis_name: Optional[str] = None,
            block_size: int = 0) -> tuple[jax.Array, Metrics]:
  """NT-Xent (normalised temperature-scaled cross entropy), as in the SimCLR paper.

  Args:
    z1, z2: [n, d] projections of the two views of the same n images (this
      device's rows when `axis_name` is set). L2-normalised here.
    temperature: softmax temperature (0.1 ImageNet, 0.5 CIFAR in the paper).
    axis_name: mesh axis to gather negatives over, inside `jax.shard_map`.
    block_size: > 0 computes the loss over blocks of this many candidate
      columns with a running log-sum-exp (and recomputation in the backward
      pass), so a device holds O(n x block_size) logits instead of O(n x 2N).

  Returns:
    (loss, metrics). loss is the paper's: the mean over all 2N anchors of
    -log softmax of the anchor's positive among the 2N - 1 other views.
    google-research/simclr's code returns mean(loss_a) + mean(loss_b), which is
    2x this value: halve its logged loss to compare. metrics: `contrast_acc`
    (the positive has the largest logit among the other view's N candidates),
    `contrast_entropy` (mean entropy of that softmax).
  """
  z1, z2 = _l2_normalize(z1), _l2_normalize(z2)
  z1_all, offset = _gather(z1, axis_name)
  z2_all, _ = _gather(z2, axis_name)
  n, big_n = z1.shape[0], z1_all.shape[0]
  labels = offset + jnp.arange(n)
  inv_t = 1.0 / temperature

  # Anchors: both views of this device's images; candidates: every view.
  anchors = jnp.concatenate([z1, z2], 0)                       # [2n, d]
  same_view = jnp.concatenate([z1_all, z2_all], 0)             # candidates, view order a|b
  positive = jnp.sum(z1 * z2, -1) * inv_t                      # [n]
  positive = jnp.concatenate([positive, positive], 0)          # [2n]
  # Column index of each anchor's own view in `same_view` (to exclude it).
  self_col = jnp.concatenate([labels, labels + big_n], 0)       # [2n]

  if block_size and block_size < 2 * big_n:
    lse = _blockwise_lse(anchors, same_view, self_col, inv_t, block_size)
  else:
    logits = anchors @ same_view.T * inv_t                     # [2n, 2N]
    cols = jnp.arange(2 * big_n)
    logits = jnp.where(cols[None, :] == self_col[:, None], _MASK, logits)
    lse = jax.nn.logsumexp(logits, -1)
  loss = _global_sum(jnp.sum(lse - positive), axis_name) / (2 * big_n)

  # Metrics on the cross-view logits only (the official code's contrast_acc).
  # They carry no gradient and cost an [2n, N] matrix, which the blockwise path
  # also avoids: it reports them from a blocked argmax/entropy-free estimate.
  metrics = _cross_view_metrics(z1, z2, z1_all, z2_all, labels, inv_t, axis_name,
                                big_n, block_size)
  return loss, metrics


def _blockwise_lse(anchors: jax.Array, candidates: jax.Array, self_col: jax.Array,
                   inv_t: float, block_size: int) -> jax.Array:
  """log-sum-exp over candidate columns, one block at a time, self excluded."""
  total = candidates.shape[0]
  num_blocks = -(-total // block_size)
  pad = num_blocks * block_size - total
  cand = jnp.pad(candidates, ((0, pad), (0, 0))).reshape(num_blocks, block_size, -1)

  @jax.checkpoint  # recompute each block's logits in the backward pass
  def body(carry, inputs):
    running_max, running_sum = carry
    block, start = inputs
    cols = start + jnp.arange(block_size)
    logits = anchors @ block.T * inv_t
    invalid = (cols[None, :] == self_col[:, None]) | (cols[None, :] >= total)
    logits = jnp.where(invalid, _MASK, logits)
    new_max = jnp.maximum(running_max, jnp.max(logits, -1))
    running_sum = (running_sum * jnp.exp(running_max - new_max)
                   + jnp.sum(jnp.exp(logits - new_max[:, None]), -1))
    return (new_max, running_sum), None

  # Built from `anchors` so that, inside shard_map, the carry has the same
  # per-device ("varying") type as the body's output.
  zero = anchors[:, 0] * 0.0
  init = (zero + _MASK, zero)
  starts = jnp.arange(num_blocks) * block_size
  (running_max, running_sum), _ = jax.lax.scan(body, init, (cand, starts))
  return running_max + jnp.log(running_sum)


def _cross_view_metrics(z1, z2, z1_all, z2_all, labels, inv_t, axis_name, big_n,
                        block_size) -> Metrics:
  z1, z2 = jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2)
  z1_all, z2_all = jax.lax.stop_gradient(z1_all), jax.lax.stop_gradient(z2_all)
  chunk = block_size if block_size else 2 * big_n
  if chunk >= big_n:
    logits_ab = z1 @ z2_all.T * inv_t
    logits_ba = z2 @ z1_all.T * inv_t
    correct = (jnp.sum(jnp.argmax(logits_ab, -1) == labels)
               + jnp.sum(jnp.argmax(logits_ba, -1) == labels))
    entropy = jnp.sum(_entropy(logits_ab)) + jnp.sum(_entropy(logits_ba))
  else:
    # Blockwise: the positive is ranked first iff no candidate beats it; the
    # entropy needs a second pass, so the blockwise path reports it too via a
    # running (max, sum, sum of p*logit) accumulation.
    correct, entropy = 0, 0
    for anchor, cand in ((z1, z2_all), (z2, z1_all)):
      c, e = _blockwise_rank_entropy(anchor, cand, labels, inv_t, chunk)
      correct, entropy = correct + c, entropy + e
  denom = 2 * big_n
  return {
      'contrast_acc': _global_sum(correct.astype(jnp.float32), axis_name) / denom,
      'contrast_entropy': _global_sum(entropy, axis_name) / denom,
  }


def _blockwise_rank_entropy(anchor, cand, labels, inv_t, block_size):
  total = cand.shape[0]
  num_blocks = -(-total // block_size)
  pad = num_blocks * block_size - total
  blocks = jnp.pad(cand, ((0, pad), (0, 0))).reshape(num_blocks, block_size, -1)
  positive = jnp.sum(anchor * cand[labels], -1) * inv_t

  def body(carry, inputs):
    m, s, w, beaten = carry
    block, start = inputs
    cols = start + jnp.arange(block_size)
    logits = anchor @ block.T * inv_t
    valid = cols[None, :] < total
    logits = jnp.where(valid, logits, _MASK)
    # The positive's own column is skipped: its blocked dot product may round
    # one ulp above `positive` and would count as beating itself.
    rival = valid & (cols[None, :] != labels[:, None])
    beaten = beaten | jnp.any(rival & (logits > positive[:, None]), -1)
    new_m = jnp.maximum(m, jnp.max(logits, -1))
    scale = jnp.exp(m - new_m)
    p = jnp.exp(logits - new_m[:, None])
    return (new_m, s * scale + p.sum(-1), w * scale + (p * logits).sum(-1), beaten), None

  zero = anchor[:, 0] * 0.0  # varying inside shard_map, like the body's output
  init = (zero + _MASK, zero, zero, zero > 0)
  (m, s, w, beaten), _ = jax.lax.scan(
      body, init, (blocks, jnp.arange(num_blocks) * block_size))
  lse = m + jnp.log(s)
  entropy = lse - w / s  # H = lse - E_p[logit]
  return jnp.sum(~beaten), jnp.sum(entropy)


def supcon(z: jax.Array, labels: jax.Array, *, temperature: float,
           base_temperature: Optional[float] = None,
           axis_name: Optional[str] = None) -> tuple[jax.Array, Metrics]:
  """Supervised contrastive loss (Khosla et al. 2020, 'SupCon', L_out).

  Args:
    z: [n, V, d] projections of V views of n images (this device's rows under
      `axis_name`). L2-normalised here.
    labels: [n] integer labels; views of images with equal labels are positives.
      A label < 0 (unlabelled, e.g. STL-10's unlabelled split) matches no other
      image: its positives are its own other views, as in SimCLR.
    temperature, base_temperature: the loss is scaled by
      temperature / base_temperature (base_temperature None or 0 = temperature).
    axis_name: mesh axis to gather z and labels over, inside `jax.shard_map`.

  Every view is an anchor. Its positives are all other views with the same label;
  its denominator is every view but itself. Anchors with no positive (possible
  only with V = 1) are left out of the mean rather than producing 0/0 = NaN.
  With distinct labels and V = 2 this equals `nt_xent`.
  """
  base_temperature = base_temperature or temperature
  n, v, _ = z.shape
  z = _l2_normalize(z)
  z_all, offset = _gather(z, axis_name)
  labels_all, _ = _gather(labels, axis_name)
  big_n = z_all.shape[0]

  anchors = z.reshape(n * v, -1)                                # row = i * V + view
  cands = z_all.reshape(big_n * v, -1)
  anchor_label = jnp.repeat(labels, v)
  cand_label = jnp.repeat(labels_all, v)
  self_col = (offset + jnp.arange(n)).repeat(v) * v + jnp.tile(jnp.arange(v), n)

  logits = anchors @ cands.T / temperature                      # [nV, NV]
  is_self = jnp.arange(big_n * v)[None, :] == self_col[:, None]
  logits = jnp.where(is_self, _MASK, logits)
  log_prob = logits - jax.nn.logsumexp(logits, -1, keepdims=True)
  same_image = (offset + jnp.arange(n)).repeat(v)[:, None] == jnp.arange(big_n).repeat(v)[None, :]
  same_label = (anchor_label[:, None] == cand_label[None, :]) & (anchor_label[:, None] >= 0)
  positive = (same_label | same_image) & ~is_self
  num_pos = positive.sum(-1)
  mean_log_prob_pos = (jnp.sum(jnp.where(positive, log_prob, 0.0), -1)
                       / jnp.maximum(num_pos, 1))
  has_pos = (num_pos > 0).astype(jnp.float32)
  num_anchors = _global_sum(has_pos.sum(), axis_name)
  loss = -(temperature / base_temperature) * _global_sum(
      jnp.sum(mean_log_prob_pos * has_pos), axis_name) / jnp.maximum(num_anchors, 1.0)

  # A view's nearest other view carries its label: kNN-1 accuracy in the batch.
  top = jnp.argmax(jax.lax.stop_gradient(logits), -1)
  correct = jnp.sum(jnp.take_along_axis(positive, top[:, None], -1))
  total = _global_sum(jnp.asarray(n * v, jnp.float32), axis_name)
  entropy = _global_sum(jnp.sum(_entropy(jax.lax.stop_gradient(logits))), axis_name)
  return loss, {'contrast_acc': _global_sum(correct.astype(jnp.float32), axis_name) / total,
                'contrast_entropy': entropy / total}


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, *,
                      temperature: float) -> jax.Array:
  """SimCLR v2 distillation: tau^2 x CE(softmax(teacher / tau), student / tau), batch mean.

  The teacher is held fixed (stop_gradient). The tau^2 factor keeps gradient
  magnitudes comparable across temperatures (Hinton et al.).
  """
  teacher = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
                           / temperature, -1)
  log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, -1)
  return temperature ** 2 * jnp.mean(-jnp.sum(teacher * log_student, -1))


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                          mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """(mean cross entropy, accuracy) over rows where mask is true (labels >= 0 by default)."""
  if mask is None:
    mask = labels >= 0
  mask = mask.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  safe = jnp.maximum(labels, 0)
  nll = -jnp.take_along_axis(logp, safe[:, None], -1)[:, 0]
  count = jnp.maximum(mask.sum(), 1.0)
  acc = jnp.sum((jnp.argmax(logits, -1) == safe) * mask) / count
  return jnp.sum(nll * mask) / count, acc


# --- Momentum / memory methods (methods/momentum.py, byol.py, moco.py, mocov3.py) ---
# The momentum network's outputs and the queue are targets: they pass through
# stop_gradient here, so no gradient reaches them whatever the caller does.

def _global_count(n: int, axis_name: Optional[str]) -> jax.Array:
  return _global_sum(jnp.asarray(n, jnp.float32), axis_name)


def nt_xent_memory(z1: jax.Array, z2: jax.Array, memory: jax.Array, *, temperature: float,
                   axis_name: Optional[str] = None) -> tuple[jax.Array, Metrics]:
  """NT-Xent whose negatives are the global batch plus a memory of keys (SimCLR v2).

  Args:
    z1, z2: [n, d] online projections of the two views of n images (this
      device's rows under `axis_name`); L2-normalised here.
    memory: [M, d] keys of earlier steps (the momentum network's projections),
      the same on every device; L2-normalised here; no gradient.
    temperature, axis_name: as `nt_xent`.

  Returns:
    (loss, metrics): `nt_xent`'s loss with the M memory logits added to every
    anchor's denominator: the mean over the 2N anchors of -log softmax of the
    positive among the 2N - 1 other views and the M keys. metrics:
    `contrast_acc` (the positive beats the other view's N - 1 negatives and the
    M keys), `contrast_entropy` (of that softmax).
  """
  z1, z2 = _l2_normalize(z1), _l2_normalize(z2)
  memory = jax.lax.stop_gradient(_l2_normalize(memory))
  z1_all, offset = _gather(z1, axis_name)
  z2_all, _ = _gather(z2, axis_name)
  n, big_n = z1.shape[0], z1_all.shape[0]
  labels = offset + jnp.arange(n)
  inv_t = 1.0 / temperature

  anchors = jnp.concatenate([z1, z2], 0)                            # [2n, d]
  batch = jnp.concatenate([z1_all, z2_all], 0)                      # [2N, d]
  self_col = jnp.concatenate([labels, labels + big_n], 0)
  logits = anchors @ batch.T * inv_t
  logits = jnp.where(jnp.arange(2 * big_n)[None, :] == self_col[:, None], _MASK, logits)
  logits = jnp.concatenate([logits, anchors @ memory.T * inv_t], 1)  # [2n, 2N + M]
  positive = jnp.sum(z1 * z2, -1) * inv_t
  positive = jnp.concatenate([positive, positive], 0)
  loss = _global_sum(jnp.sum(jax.nn.logsumexp(logits, -1) - positive), axis_name) / (2 * big_n)

  # Metrics: the other view's candidates and the memory.
  sg = jax.lax.stop_gradient
  correct, entropy = 0.0, 0.0
  for anchor, cand in ((z1, z2_all), (z2, z1_all)):
    cross = jnp.concatenate([anchor @ cand.T, anchor @ memory.T], 1) * inv_t
    cross = sg(cross)
    correct = correct + jnp.sum(jnp.argmax(cross, -1) == labels)
    entropy = entropy + jnp.sum(_entropy(cross))
  denom = 2 * big_n
  return loss, {'contrast_acc': _global_sum(jnp.asarray(correct, jnp.float32), axis_name) / denom,
                'contrast_entropy': _global_sum(entropy, axis_name) / denom}


def info_nce_queue(q: jax.Array, k: jax.Array, queue: jax.Array, *, temperature: float,
                   axis_name: Optional[str] = None) -> tuple[jax.Array, Metrics]:
  """MoCo's InfoNCE (He et al. 2019; v2: Chen et al. 2020): each query against its
  key (the positive) and the queue's keys (the negatives).

  Args:
    q: [n, d] online projections (queries) of this device's images.
    k: [n, d] the momentum network's projections (keys) of another view of the
      same images; no gradient.
    queue: [K, d] keys of earlier steps, the same on every device; no gradient.
    Each is L2-normalised here.

  Returns:
    (loss, metrics): the mean over the N global queries of
    -log(exp(q.k / T) / (exp(q.k / T) + sum_j exp(q.queue_j / T))), as MoCo's
    cross entropy over [l_pos, l_neg] with label 0. metrics: `contrast_acc`
    (the key beats every queue entry), `contrast_entropy`.
  """
  q = _l2_normalize(q)
  k = jax.lax.stop_gradient(_l2_normalize(k))
  queue = jax.lax.stop_gradient(_l2_normalize(queue))
  inv_t = 1.0 / temperature
  positive = jnp.sum(q * k, -1) * inv_t                              # [n]
  logits = jnp.concatenate([positive[:, None], q @ queue.T * inv_t], 1)   # [n, 1 + K]
  total = _global_count(q.shape[0], axis_name)
  loss = _global_sum(jnp.sum(jax.nn.logsumexp(logits, -1) - positive), axis_name) / total
  sg = jax.lax.stop_gradient(logits)
  correct = jnp.sum(jnp.argmax(sg, -1) == 0).astype(jnp.float32)
  return loss, {'contrast_acc': _global_sum(correct, axis_name) / total,
                'contrast_entropy': _global_sum(jnp.sum(_entropy(sg)), axis_name) / total}


def moco_v3_info_nce(q: jax.Array, k: jax.Array, *, temperature: float,
                     axis_name: Optional[str] = None) -> tuple[jax.Array, Metrics]:
  """MoCo v3's symmetric InfoNCE (Chen, Xie & He 2021) over the global batch.

  Args:
    q: [n, 2, d] the online network's predictions of both views.
    k: [n, 2, d] the momentum network's projections of both views (no
      gradient), all-gathered over `axis_name`: the N keys of the other view
      are each query's candidates, its own image's key the positive.
    Each is L2-normalised here.

  Returns:
    (loss, metrics): as facebookresearch/moco-v3's `ctr_loss(q1, k2) +
    ctr_loss(q2, k1)`, i.e. 2T x (CE(q1 vs k2) + CE(q2 vs k1)), each CE the mean
    over the N queries (the 2T factor is the official code's, so its learning
    rates carry over). metrics: `contrast_acc` (the positive key has the
    largest logit, both directions), `contrast_entropy`.
  """
  q = _l2_normalize(q)
  k = jax.lax.stop_gradient(_l2_normalize(k))
  k_all, offset = _gather(k, axis_name)
  n, big_n = q.shape[0], k_all.shape[0]
  labels = offset + jnp.arange(n)
  inv_t = 1.0 / temperature
  ce, correct, entropy = 0.0, 0.0, 0.0
  for qv, kv in ((q[:, 0], k_all[:, 1]), (q[:, 1], k_all[:, 0])):
    logits = qv @ kv.T * inv_t                                        # [n, N]
    positive = jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]
    ce = ce + jnp.sum(jax.nn.logsumexp(logits, -1) - positive)
    sg = jax.lax.stop_gradient(logits)
    correct = correct + jnp.sum(jnp.argmax(sg, -1) == labels)
    entropy = entropy + jnp.sum(_entropy(sg))
  loss = 2.0 * temperature * _global_sum(ce, axis_name) / big_n
  return loss, {'contrast_acc': _global_sum(jnp.asarray(correct, jnp.float32), axis_name)
                / (2 * big_n),
                'contrast_entropy': _global_sum(entropy, axis_name) / (2 * big_n)}


def byol_regression(p: jax.Array, z: jax.Array, *,
                    axis_name: Optional[str] = None) -> tuple[jax.Array, Metrics]:
  """BYOL's symmetric normalised MSE (Grill et al. 2020).

  Args:
    p: [n, 2, d] the online network's predictions of both views.
    z: [n, 2, d] the target (momentum) network's projections; no gradient.

  Returns:
    (loss, metrics): as deepmind-research/byol's `regression_loss(p1, z2) +
    regression_loss(p2, z1)`, averaged over the N global images, where
    regression_loss = ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z); so in [0, 8].
    metrics: `cosine`, the mean cosine of a prediction and its target.
  """
  p = _l2_normalize(p)
  z = jax.lax.stop_gradient(_l2_normalize(z))
  per_image = (jnp.sum((p[:, 0] - z[:, 1]) ** 2, -1) + jnp.sum((p[:, 1] - z[:, 0]) ** 2, -1))
  total = _global_count(p.shape[0], axis_name)
  loss = _global_sum(jnp.sum(per_image), axis_name) / total
  cos = jnp.sum(p[:, 0] * z[:, 1], -1) + jnp.sum(p[:, 1] * z[:, 0], -1)
  cos = _global_sum(jnp.sum(jax.lax.stop_gradient(cos)), axis_name) / (2 * total)
  return loss, {'cosine': cos}
