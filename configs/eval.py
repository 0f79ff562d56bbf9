r"""Evaluation of a trained encoder: linear probe, kNN, (fine-tuned) classifier.

  python -m contrastive_jax.eval --config=configs/eval.py --workdir=/tmp/cj_eval \
      --config.init_from=/tmp/cj_smoke [--config.modes=linear,knn] [--config.step=0]

  # follow a running job, evaluating each new checkpoint until its last step:
  python -m contrastive_jax.eval --config=configs/eval.py --workdir=/tmp/cj_eval \
      --config.init_from=/tmp/cj_smoke --config.continuous=True

  # a fine-tuned / distilled classifier's own top-1 / top-5:
  python -m contrastive_jax.eval --config=configs/eval.py --workdir=/tmp/cj_eval \
      --config.init_from=/tmp/cj_finetune --config.modes=classifier

Results: WORKDIR/eval/results.json (latest), WORKDIR/eval/step_<N>.json,
WORKDIR/eval/metrics.jsonl + tensorboard/, WORKDIR/eval/embedding_{pca,tsne}.png.

The data is the init_from run's config.data; any key set under config.data
here overrides it (e.g. --config.data.source=idx --config.data.idx_dir=...).
Protocol: SimCLR's linear evaluation with one deviation. SimCLR trains the
linear head on random crop + flip views; here the features are computed once
with the eval preprocessing (centre crop, no augmentation) and cached, so the
whole learning-rate grid trains in seconds instead of one encoder pass per
epoch per grid point. Numbers are therefore not the paper's protocol to the
letter; that one is `finetune --config=configs/finetune_v1.py:linear`. The
linear probe's learning rate x weight decay (x feature_norm, when several are
given) grid is chosen on the validation carve of train (the run's
config.data.val_examples, else val_fraction of train), retrained on train +
val and reported once on test.

After configs/smoke.py (the README's main job) the evaluation takes seconds
on 2 CPU cores, t-SNE's plot somewhat longer; its figures are in the README's
Measured table and, run by run, in benchmarks/README.md.
"""

import ml_collections
from ml_collections import config_dict

from contrastive_jax import config_defaults


def _data_overrides() -> ml_collections.ConfigDict:
  """Every config.data key, unset (None): set ones override the run's data config."""
  return ml_collections.ConfigDict({
      key: config_dict.placeholder(type(value))
      for key, value in config_defaults.data_defaults().items()})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 256           # global batch of the feature extraction
  config.multihost = 'auto'         # as pretraining: 'auto' | 'yes' | 'no'
  config.init_from = ''             # the pretrain / finetune / distill workdir
  config.step = 0                   # checkpoint step; 0 = the latest
  config.modes = 'linear,knn'       # comma-separated: 'linear', 'knn', 'classifier'
  config.feature = 'h'              # encoder output; 'proj_1', ..., 'z' = head layers
  config.val_fraction = 0.1         # val carve when the run's config.data has none

  config.continuous = False         # follow a running job's new checkpoints
  config.continuous_timeout_s = 3600.0  # give up after this long without a new one
  config.continuous_poll_s = 10.0

  config.data = _data_overrides()

  # Linear probe on frozen features (SimCLR v1 README: momentum SGD, base LR
  # 0.1 x B / 256, 90 epochs on ImageNet, no feature normalisation).
  config.linear = ml_collections.ConfigDict(dict(
      optimizer='sgd',              # 'sgd' (momentum) | 'lars' (trust ratio on the kernel)
      momentum=0.9,
      nesterov=False,
      # The grid must bracket what val chooses: with weight decays only up to
      # 1e-3 the Fashion-MNIST probes chose the edge, 1e-3; up to 1e-2 they
      # choose 3e-3, inside it, and read higher on val and test. 1e-5 reads
      # the same as 0 and is left out (benchmarks/NOTES.md, "Fashion-MNIST
      # recipe").
      learning_rates=(0.03, 0.1, 0.3, 1.0, 3.0),  # base rates, chosen on val
      lr_scaling='linear',          # x B / 256 | 'sqrt' | 'none'
      weight_decays=(0.0, 1e-4, 1e-3, 3e-3, 1e-2),  # L2 on the kernel, chosen on val
      epochs=30,                    # 90 for ImageNet
      batch_size=256,               # <= 0: full batch
      schedule='cosine',            # 'cosine' | 'constant'
      # 'none' (SimCLR) | 'l2' | 'standardize', or several comma-separated
      # ('none,standardize'): one more grid axis, chosen on val.
      feature_norm='none',
  ))

  # Weighted kNN on L2-normalised features, train split as the memory bank.
  config.knn = ml_collections.ConfigDict(dict(
      ks=(20, 200),
      temperature=0.07,
      chunk_size=256,               # test rows per similarity block
      # 'none' (cosine of the raw features) | 'standardize' (per-dimension,
      # bank statistics, then cosine), or 'none,standardize': chosen on val
      # by top-1 at ks[0], with train as the bank.
      feature_norm='none',
  ))

  config.plot = True                # 2-D embedding of test features as PNG
  config.plot_methods = 'pca,tsne'  # t-SNE needs scikit-learn
  config.plot_max_points = 2000

  if arg == 'tiny':  # for tests: seconds
    config.batch_size = 64
    config.linear.learning_rates = (0.3, 3.0)
    config.linear.weight_decays = (0.0, 1e-3)
    config.linear.epochs = 5
    config.linear.batch_size = 128
    config.knn.chunk_size = 128
    config.plot_max_points = 300
    config.continuous_timeout_s = 60.0
    config.continuous_poll_s = 0.2
  elif arg:
    raise ValueError(f"configs/eval.py: unknown argument {arg!r}; use '' or 'tiny'.")
  return config
