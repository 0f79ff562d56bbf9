"""Supervised contrastive learning (Khosla et al. 2020) on CIFAR-10.

  python -m contrastive_jax.pretrain --config=configs/supcon_cifar10.py --workdir=/tmp/supcon_c10

SupContrast's CIFAR recipe: ResNet-50 (CIFAR stem), batch 1024, temperature
0.1 (the SupContrast README's runs; the paper's default is 0.07), LR 0.5 x B/256
with cosine decay and 10 warmup epochs (SupContrast uses SGD at 0.5 for batch
1024; LARS here as in SimCLR), 1000 epochs, SimCLR augmentation at strength
0.5. Published: 96.0% linear eval (SimCLR 93.6%, cross-entropy 95.0%).
Labels define the positives, so this is not self-supervised.
"""

from contrastive_jax import config_defaults


def get_config(arg: str | None = None):
  config = config_defaults.pretrain_defaults()
  config.method = 'supcon'
  config.supcon.temperature = 0.1
  config.supcon.base_temperature = 0.07   # SupContrast scales the loss by t / 0.07
  config.batch_size = 1024
  config.num_epochs = 1000
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000

  config.data.source = 'tfds'
  config.data.name = 'cifar10'
  config.data.val_examples = 5000

  config.augment.jitter_strength = 0.5
  config.augment.blur_prob = 0.0

  config.model.resnet.depth = 50
  config.model.resnet.stem = 'cifar'

  config.optim.name = 'lars'
  config.optim.learning_rate = 0.5
  config.optim.lr_scaling = 'linear'
  config.optim.weight_decay = 1e-4
  config.optim.warmup_epochs = 10
  if arg == 'r18':
    config.model.resnet.depth = 18
    config.batch_size = 512
  elif arg:
    raise ValueError(f"configs/supcon_cifar10.py takes '' or 'r18', not {arg!r}.")
  return config
