r"""SimCLR v2 semi-supervised fine-tuning: from the first projection layer, with LARS.

  python -m contrastive_jax.finetune --config=configs/finetune_v2.py:1pct \
      --workdir=/tmp/ft2 --config.init_from=/tmp/pretrain_v2

Recipe (SimCLR v2; google-research/simclr's fine-tuning command): the network is
kept up to the first layer of a 3-layer projection head (`ft_proj_selector=1`,
so pretrain with --config.model.num_proj_layers=3), a zero-initialised linear
classifier on top, everything trained; LARS, LR 0.005 x sqrt(B) (0.16 at batch
1024), no weight decay, no warmup, cosine decay, crop + flip only, global BN;
60 epochs over the labelled subset for 1%, 30 for 10% (our choice: 30 for 100%).
"""

from contrastive_jax import config_defaults

EPOCHS = {'1pct': 60, '10pct': 30, '100pct': 30}
FRACTIONS = {'1pct': 0.01, '10pct': 0.1, '100pct': 1.0}


def get_config(arg: str | None = None):
  arg = arg or '1pct'
  if arg not in EPOCHS:
    raise ValueError(f'configs/finetune_v2.py:{arg}; choose one of {sorted(EPOCHS)}.')
  config = config_defaults.finetune_defaults()
  config.label_fraction = FRACTIONS[arg]
  config.num_epochs = EPOCHS[arg]
  config.batch_size = 256
  config.log_every_steps = 10
  config.checkpoint_every_steps = 500

  config.ft_proj_selector = 1          # v2: from the first projection layer
  config.fine_tune_after_block = -1
  config.zero_init = True
  config.model.num_proj_layers = 3     # v2's head (read from init_from when set)

  config.data.source = 'embedded'
  config.data.val_examples = 1000

  config.optim.name = 'lars'
  config.optim.learning_rate = 0.005   # x sqrt(B)
  config.optim.lr_scaling = 'sqrt'
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.weight_decay = 0.0
  config.optim.warmup_epochs = 0.0
  config.optim.schedule = 'cosine'
  return config
