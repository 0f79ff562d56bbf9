"""BYOL on ImageNet: ResNet-50, batch 4096, LARS, 1000 epochs.

  python -m contrastive_jax.pretrain --config=configs/byol_imagenet.py \
      --workdir=gs://BUCKET/byol_r50 --config.data.data_dir=gs://BUCKET/tfds
  # the shorter presets: --config=configs/byol_imagenet.py:300ep (or :100ep)

Sources: Grill et al. 2020, "Bootstrap Your Own Latent" (arXiv:2006.07733,
appendix B/C), and deepmind-research/byol (configs/byol.py presets:
base LR 0.2 / 0.3 / 0.45, weight decay 1.5e-6 / 1e-6 / 1e-6, tau_base
0.996 / 0.99 / 0.99 for 1000 / 300 / 100 epochs; LR x B/256 with 10 warmup
epochs then cosine; LARS with eta 1e-3 and momentum 0.9, biases and BN
excluded from weight decay and adaptation; projector and predictor
4096 -> 256; BN decay 0.9, eps 1e-5; tau from tau_base to 1 on a cosine).
Published linear eval: 74.3% (1000 epochs).

Differences from the official code: BYOL's augmentations differ per view
(blur p 1.0 / 0.1, solarize p 0 / 0.2); here both views share one recipe, so
each gets their mean (blur 0.55, solarize 0.1). Colour jitter (0.4, 0.4, 0.4,
0.1) with p 0.8 (saturation 0.4, BYOL's 0.2), additive brightness as
BYOL's, grayscale 0.2. The projector's last layer has BatchNorm (SimCLR's
head; BYOL's ends with a plain Linear). Needs tfds `imagenet2012` under
config.data.data_dir, as configs/imagenet_simclr_v1.py.
"""

from contrastive_jax import config_defaults

# epochs: (base LR, weight decay, tau_base), deepmind-research/byol configs/byol.py.
_PRESETS = {1000: (0.2, 1.5e-6, 0.996), 300: (0.3, 1e-6, 0.99), 100: (0.45, 1e-6, 0.99)}


def get_config(arg: str | None = None):
  epochs = {None: 1000, '': 1000, '1000ep': 1000, '300ep': 300, '100ep': 100}.get(arg)
  if epochs is None:
    raise ValueError(f"configs/byol_imagenet.py takes '', '300ep' or '100ep', not {arg!r}.")
  learning_rate, weight_decay, tau = _PRESETS[epochs]

  config = config_defaults.pretrain_defaults()
  config.method = 'byol'
  config.batch_size = 4096
  config.num_epochs = epochs
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000

  config.byol.momentum = tau
  config.byol.momentum_schedule = 'cosine'
  config.byol.predictor_hidden_dim = 4096

  config.data.source = 'tfds'
  config.data.name = 'imagenet2012'
  config.data.in_memory = False
  config.data.image_size = 224
  config.data.host_image_size = 320   # letterboxed photos: see imagenet_simclr_v1.py
  config.data.test_split = 'validation'

  config.augment.crop_area_min = 0.08
  config.augment.jitter_strength = 0.5     # brightness/contrast 0.4, hue 0.1
  config.augment.brightness_mode = 'additive'
  config.augment.blur_prob = 0.55          # BYOL: 1.0 (view 1), 0.1 (view 2)
  config.augment.solarize_prob = 0.1       # BYOL: 0.0 (view 1), 0.2 (view 2)
  config.augment.matmul_precision = 'default'

  config.model.resnet.depth = 50
  config.model.resnet.stem = 'imagenet'
  config.model.num_proj_layers = 2
  config.model.proj_hidden_dim = 4096
  config.model.proj_dim = 256
  config.model.dtype = 'bfloat16'

  config.optim.name = 'lars'
  config.optim.learning_rate = learning_rate
  config.optim.lr_scaling = 'linear'
  config.optim.weight_decay = weight_decay
  config.optim.momentum = 0.9
  config.optim.trust_coefficient = 1e-3
  config.optim.warmup_epochs = 10
  config.optim.schedule = 'cosine'
  return config
