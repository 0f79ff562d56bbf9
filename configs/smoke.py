"""Smoke run: a tiny ResNet on the embedded Fashion-MNIST subset (no download).

  python -m contrastive_jax.pretrain --config=configs/smoke.py --workdir=/tmp/cj_smoke

Expected on 2 CPU cores: about 2 minutes; the README's main job runs it, then
the linear-probe/kNN evaluation. Its measured figures: the README's Measured
table, and run by run benchmarks/README.md.
"""

from contrastive_jax import config_defaults


def get_config(arg: str | None = None):
  config = config_defaults.pretrain_defaults()
  config.seed = 0
  config.batch_size = 256
  config.total_steps = 300
  config.log_every_steps = 25
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 2

  config.data.source = 'embedded'
  config.data.val_examples = 1000  # probe choices are made on this, not on test

  # 28x28 grayscale: crops below 0.2 of the area leave too little of a garment
  # to match its pair; no blur (CIFAR-style recipe for tiny images).
  config.augment.crop_area_min = 0.2
  config.augment.jitter_strength = 0.5
  config.augment.blur_prob = 0.0

  config.model.resnet.depth = 0
  config.model.resnet.stage_sizes = (1, 1, 1)
  config.model.resnet.block = 'basic'
  config.model.resnet.base_width = 16
  config.model.resnet.stem = 'cifar'
  config.model.num_proj_layers = 2
  config.model.proj_dim = 64

  config.simclr.temperature = 0.2
  config.optim.name = 'lars'
  config.optim.learning_rate = 0.075   # x sqrt(B): SimCLR's small-batch rule
  config.optim.lr_scaling = 'sqrt'
  config.optim.weight_decay = 1e-6
  config.optim.warmup_fraction = 0.05

  if arg == 'tiny':  # for tests: seconds, not minutes
    config.batch_size = 32
    config.total_steps = 6
    config.log_every_steps = 2
    config.checkpoint_every_steps = 3
    config.model.resnet.stage_sizes = (1, 1)
    config.model.resnet.base_width = 8
    config.model.proj_dim = 16
    config.data.image_size = 16
    config.data.val_examples = 0
  return config
