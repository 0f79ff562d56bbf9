r"""SimCLR v1 semi-supervised fine-tuning: the whole network, from h, on 1% / 10% labels.

  python -m contrastive_jax.finetune --config=configs/finetune_v1.py:1pct \
      --workdir=/tmp/ft1 --config.init_from=/tmp/cj_smoke
  # SimCLR's linear evaluation (frozen encoder, crop + flip, all labels):
  python -m contrastive_jax.finetune --config=configs/finetune_v1.py:linear \
      --workdir=/tmp/lin --config.init_from=/tmp/cj_smoke

Recipe (SimCLR, Chen et al. 2020, appendix B, "Semi-supervised learning via
fine-tuning"): Nesterov momentum 0.9, LR 0.05 x B/256 (0.8 at the paper's
batch 4096), no weight decay, no warmup, cosine decay, crop + flip only,
global BN; 60 epochs over the labelled subset for 1%, 30 for 10%
(and, our choice, 30 for 100%). The paper's batch is 4096 on ImageNet; the
default here is 256, which suits the small (embedded / Fashion-MNIST) subsets.

`:linear` is the paper's linear evaluation protocol: only a linear classifier
on h is trained (fine_tune_after_block=classifier.FREEZE_ALL: the encoder and
its BatchNorm statistics stay as pretrained), on every training label, with crop + flip
inputs, Nesterov momentum, LR 0.1 x B/256 (1.6 at 4096), 90 epochs, weight
decay 1e-6 (the official README's linear-eval command). The eval binary's
linear probe is the cheap alternative: it fits the classifier on cached,
unaugmented features with an LR x wd grid chosen on the validation carve.
The architecture is read from init_from; `--config.init_from=''
--config.model_from=PRETRAIN_DIR` trains the same network from scratch.

Expected on 2 CPU cores after configs/smoke.py (embedded data, 1%: 90 labelled
examples, 22 steps): well under a minute; see benchmarks/semi_supervised.md for
measured numbers on full Fashion-MNIST.
"""

from contrastive_jax import config_defaults
from contrastive_jax.models import classifier

EPOCHS = {'1pct': 60, '10pct': 30, '100pct': 30, 'linear': 90}
FRACTIONS = {'1pct': 0.01, '10pct': 0.1, '100pct': 1.0, 'linear': 1.0}


def get_config(arg: str | None = None):
  arg = arg or '1pct'
  if arg not in EPOCHS:
    raise ValueError(f'configs/finetune_v1.py:{arg}; choose one of {sorted(EPOCHS)}.')
  config = config_defaults.finetune_defaults()
  config.label_fraction = FRACTIONS[arg]
  config.num_epochs = EPOCHS[arg]
  config.batch_size = 256
  config.log_every_steps = 10
  config.checkpoint_every_steps = 500

  config.ft_proj_selector = 0          # v1: the classifier sits on h
  config.fine_tune_after_block = -1    # train everything
  config.zero_init = True

  config.data.source = 'embedded'
  config.data.val_examples = 1000      # the same carve as configs/smoke.py

  config.optim.name = 'sgd'
  config.optim.learning_rate = 0.05    # x B/256
  config.optim.lr_scaling = 'linear'
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.weight_decay = 0.0
  config.optim.warmup_epochs = 0.0
  config.optim.schedule = 'cosine'

  if arg == 'linear':
    config.fine_tune_after_block = classifier.FREEZE_ALL
    config.optim.learning_rate = 0.1   # x B/256
    config.optim.weight_decay = 1e-6
  return config
