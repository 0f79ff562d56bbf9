"""2-D embeddings of features (PCA, t-SNE) drawn as PNG scatter plots.

PCA is NumPy (SVD). t-SNE needs scikit-learn and the drawing needs matplotlib
(both dependencies of the package); both are imported inside functions, and a
missing one makes the function return None instead of failing an evaluation.
matplotlib is used through its object API with the Agg canvas, so no global
backend is set and no display is needed.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from contrastive_jax import files


def subsample(num: int, max_points: int, seed: int) -> np.ndarray:
  """Sorted positions of at most `max_points` of `num` rows (all when it fits)."""
  if max_points <= 0 or num <= max_points:
    return np.arange(num)
  return np.sort(np.random.default_rng(seed).permutation(num)[:max_points])


def pca_2d(features: np.ndarray) -> np.ndarray:
  """[N, D] -> [N, 2]: projection on the top two principal axes.

  Signs are fixed (largest |loading| of each axis positive) so the picture does
  not flip between runs.
  """
  x = np.asarray(features, np.float64)
  x = x - x.mean(0, keepdims=True)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  axes = vt[:2]
  if axes.shape[0] < 2:  # a 1-D feature: pad a zero axis
    axes = np.concatenate([axes, np.zeros((2 - axes.shape[0], x.shape[1]))])
  signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])
  axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
  return (x @ axes.T).astype(np.float32)


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray | None:
  """[N, D] -> [N, 2] with sklearn's t-SNE (PCA init); None when sklearn is missing."""
  try:
    from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  x = np.asarray(features, np.float32)
  perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
  tsne = TSNE(n_components=2, init='pca', perplexity=perplexity, random_state=seed)
  try:
    from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
  except ImportError:  # an sklearn dependency; absent only in odd installs
    return tsne.fit_transform(x).astype(np.float32)
  # One OpenMP thread: on a busy machine (or next to JAX's own threads) its
  # spin-waiting threads make t-SNE many times slower than one thread, which
  # embeds a few thousand points in seconds.
  with threadpool_limits(limits=1):
    return tsne.fit_transform(x).astype(np.float32)


def scatter_png(points: np.ndarray, labels: np.ndarray, path: str, *, title: str = '',
                class_names: Sequence[str] | None = None) -> str | None:
  """Writes a scatter of points [N, 2] coloured by labels [N] to `path` (PNG).

  Returns the path, or None when matplotlib is not installed.
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  points, labels = np.asarray(points), np.asarray(labels)
  classes = np.unique(labels)
  fig = Figure(figsize=(6.4, 5.6), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  cmap = matplotlib.colormaps['tab10' if len(classes) <= 10 else 'tab20']
  for i, c in enumerate(classes):
    sel = labels == c
    name = (class_names[c] if class_names is not None and 0 <= c < len(class_names)
            else str(int(c)))
    ax.scatter(points[sel, 0], points[sel, 1], s=9, alpha=0.7, linewidths=0,
               color=cmap(i % cmap.N), label=name)
  if len(classes) <= 20:
    ax.legend(loc='center left', bbox_to_anchor=(1.0, 0.5), markerscale=3, fontsize=8,
              frameon=False)
  ax.set_title(title, fontsize=10)
  ax.set_xticks([])
  ax.set_yticks([])
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png')
  files.write_bytes_atomic(path, buffer.getvalue())  # local or gs://, never half-written
  return path
