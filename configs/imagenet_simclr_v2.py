"""SimCLR v2 on ImageNet (Chen et al. 2020b): deeper head, sqrt LR scaling, SK.

  python -m contrastive_jax.pretrain --config=configs/imagenet_simclr_v2.py \
      --workdir=gs://BUCKET/simclr_v2_r50 --config.data.data_dir=gs://BUCKET/tfds
  # R50 1x + SK:   --config=configs/imagenet_simclr_v2.py:sk
  # R152 3x + SK:  --config=configs/imagenet_simclr_v2.py:r152_3x_sk

3-layer projection head (fine-tune from its first layer), LR 0.1 x sqrt(B)
(= 6.4 at 4096), weight decay 1e-4, 5% warmup then cosine, 800 epochs,
temperature 0.1, multiplicative brightness, blur. Published linear eval:
71.7% (R50 1x), 74.6% (R50 1x + SK), 79.8% (R152 3x + SK); semi-supervised
fine-tune 57.9 / 68.4 / 76.3 (R50, 1% / 10% / 100% labels).
"""

from contrastive_jax import config_defaults


def get_config(arg: str | None = None):
  config = config_defaults.pretrain_defaults()
  config.batch_size = 4096
  config.num_epochs = 800
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.simclr.temperature = 0.1

  config.data.source = 'tfds'
  config.data.name = 'imagenet2012'
  config.data.in_memory = False
  config.data.image_size = 224
  config.data.host_image_size = 320  # letterboxed training images: see imagenet_simclr_v1.py
  config.data.test_split = 'validation'

  config.augment.jitter_strength = 1.0
  config.augment.blur_prob = 0.5
  config.augment.brightness_mode = 'multiplicative'
  config.augment.matmul_precision = 'default'  # bf16 model: see imagenet_simclr_v1.py

  config.model.resnet.depth = 50
  config.model.resnet.stem = 'imagenet'
  config.model.num_proj_layers = 3
  config.model.dtype = 'bfloat16'

  config.optim.name = 'lars'
  config.optim.learning_rate = 0.1
  config.optim.lr_scaling = 'sqrt'
  config.optim.weight_decay = 1e-4
  config.optim.warmup_fraction = 0.05

  if arg == 'sk':
    config.model.resnet.sk_ratio = 0.0625
  elif arg == 'r152_3x_sk':
    config.model.resnet.depth = 152
    config.model.resnet.width_multiplier = 3
    config.model.resnet.sk_ratio = 0.0625
  elif arg:
    raise ValueError(f"configs/imagenet_simclr_v2.py takes '', 'sk' or 'r152_3x_sk', not {arg!r}.")
  return config
