"""SimCLR on CIFAR-10, the paper's appendix B.9 recipe.

  python -m contrastive_jax.pretrain --config=configs/cifar10.py --workdir=gs://BUCKET/cifar10_r50
  python -m contrastive_jax.pretrain --config=configs/cifar10.py:r18 --workdir=/tmp/cifar10_r18

ResNet-50 with the CIFAR stem (3x3/1 conv, no max-pool), batch 1024, LARS,
LR 1.0 x B/256 (the appendix sweeps 0.5 / 1.0 / 1.5), weight decay 1e-6, temperature 0.5, colour strength 0.5, no blur,
1000 epochs. Published: 94.0% linear eval (supervised R50: 95.1%).
`:r18` is the official README's CIFAR command: ResNet-18, batch 512, LR 1.0,
weight decay 1e-4 (about 91% after 1000 epochs; solo-learn reports 90.7%).
Expected time: about 10 h for R50 / 1000 epochs on a TPU v3-8; days on one GPU.
Needs the tfds `cifar10` data prepared under config.data.data_dir.
"""

from contrastive_jax import config_defaults


def get_config(arg: str | None = None):
  config = config_defaults.pretrain_defaults()
  config.batch_size = 1024
  config.num_epochs = 1000
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.simclr.temperature = 0.5

  config.data.source = 'tfds'
  config.data.name = 'cifar10'
  config.data.val_examples = 5000   # probe choices on a carve of train, not on test

  config.augment.jitter_strength = 0.5
  config.augment.blur_prob = 0.0     # no blur at 32 px (paper, appendix B.9)

  config.model.resnet.depth = 50
  config.model.resnet.stem = 'cifar'
  config.model.num_proj_layers = 2

  config.optim.name = 'lars'
  config.optim.learning_rate = 1.0
  config.optim.lr_scaling = 'linear'
  config.optim.weight_decay = 1e-6
  config.optim.warmup_epochs = 10

  if arg == 'r18':
    config.model.resnet.depth = 18
    config.batch_size = 512
    config.optim.weight_decay = 1e-4
  elif arg:
    raise ValueError(f"configs/cifar10.py takes '' or 'r18', not {arg!r}.")
  return config
