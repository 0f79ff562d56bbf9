"""MoCo v2 on ImageNet: ResNet-50, batch 256, SGD, queue of 65,536 keys.

  python -m contrastive_jax.pretrain --config=configs/moco_v2_imagenet.py \
      --workdir=gs://BUCKET/moco_v2_r50 --config.data.data_dir=gs://BUCKET/tfds
  # 800 epochs (the 71.1% row): --config=configs/moco_v2_imagenet.py:800ep

Sources: Chen, Fan, Girshick & He 2020, "Improved Baselines with Momentum
Contrastive Learning" (arXiv:2003.04297), and facebookresearch/moco (README's
MoCo v2 command: `main_moco.py -a resnet50 --lr 0.03 --batch-size 256 --mlp
--moco-t 0.2 --aug-plus --cos`, with main_moco.py's defaults: 200 epochs, SGD
momentum 0.9, weight decay 1e-4, moco-dim 128, moco-k 65536, moco-m 0.999).
Recipe: T 0.2, m 0.999 constant, 2-layer MLP head 2048 -> 128, LR 0.03 at
batch 256 (scaled linearly for other batches), cosine, no warmup; "aug+":
random resized crop of 0.2-1 of the area, colour jitter (0.4, 0.4, 0.4, 0.1)
with p 0.8 (jitter_strength 0.5), grayscale 0.2, blur 0.5, flip. Published
linear eval: 67.5% after 200 epochs, 71.1% after 800.

Differences from the official code: the projection head has BatchNorm (the
same head as SimCLR; MoCo v2's is Linear-ReLU-Linear), BatchNorm is global
over all devices instead of shuffled per GPU, and views are made on the device
(contrastive_jax.augment) rather than by torchvision. Needs tfds
`imagenet2012` under config.data.data_dir, as configs/imagenet_simclr_v1.py.
"""

from contrastive_jax import config_defaults


def get_config(arg: str | None = None):
  config = config_defaults.pretrain_defaults()
  config.method = 'moco'
  config.batch_size = 256
  config.num_epochs = 200
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000

  config.moco.temperature = 0.2
  config.moco.queue_size = 65536
  config.moco.momentum = 0.999
  config.moco.momentum_schedule = 'constant'

  config.data.source = 'tfds'
  config.data.name = 'imagenet2012'
  config.data.in_memory = False
  config.data.image_size = 224
  config.data.host_image_size = 320   # letterboxed photos: see imagenet_simclr_v1.py
  config.data.test_split = 'validation'

  config.augment.crop_area_min = 0.2
  config.augment.jitter_strength = 0.5     # torchvision ColorJitter(0.4, 0.4, 0.4, 0.1)
  config.augment.brightness_mode = 'multiplicative'   # torchvision's brightness factor
  config.augment.blur_prob = 0.5
  config.augment.matmul_precision = 'default'

  config.model.resnet.depth = 50
  config.model.resnet.stem = 'imagenet'
  config.model.num_proj_layers = 2
  config.model.proj_hidden_dim = 2048
  config.model.proj_dim = 128
  config.model.dtype = 'bfloat16'

  config.optim.name = 'sgd'
  config.optim.learning_rate = 0.03
  config.optim.lr_scaling = 'linear'       # 0.03 at batch 256
  config.optim.weight_decay = 1e-4
  config.optim.momentum = 0.9
  config.optim.warmup_epochs = 0.0
  config.optim.schedule = 'cosine'

  if arg == '800ep':
    config.num_epochs = 800
  elif arg:
    raise ValueError(f"configs/moco_v2_imagenet.py takes '' or '800ep', not {arg!r}.")
  return config
