"""SimCLR v1 on ImageNet (Chen et al. 2020a): ResNet-50, batch 4096, LARS.

  # On every host of a TPU pod slice (e.g. v3-128), via launch/tpu_vm.sh:
  python -m contrastive_jax.pretrain --config=configs/imagenet_simclr_v1.py \
      --workdir=gs://BUCKET/simclr_v1_r50 --config.data.data_dir=gs://BUCKET/tfds

LR 0.3 x B/256 (= 4.8), weight decay 1e-6, temperature 0.1, 10 warmup epochs
then cosine, 2-layer projection head (2048 -> 128), colour strength 1.0 with
blur, bfloat16 compute. Published linear eval (top-1): 64.5% after 100
epochs, 69.3% after 1000 (R50 1x); 74.2% (2x), 76.5% (4x): get_config('2x').
The paper reports about 1.5 h per 100 epochs on 128 TPU v3 cores. Needs tfds `imagenet2012`
prepared under config.data.data_dir (it cannot be downloaded automatically).
"""

from contrastive_jax import config_defaults


def get_config(arg: str | None = None):
  config = config_defaults.pretrain_defaults()
  config.batch_size = 4096
  config.num_epochs = 100           # 1000 for the headline numbers
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.simclr.temperature = 0.1

  config.data.source = 'tfds'
  config.data.name = 'imagenet2012'
  config.data.in_memory = False     # streamed with tf.data, split per host
  config.data.image_size = 224
  # Training images arrive letterboxed (longer side 320, data.random_crop_from =
  # 'image'), so the device's crop covers the whole photo as in SimCLR. 320, not
  # 256: a 4:3 photo is then 320 x 240 and a crop of 8% of it still spans ~78 px
  # before its resize to 224 (SimCLR crops the full-resolution JPEG; a 256 px
  # central square would give ~72 px). Evaluation: the central square at 320,
  # centre crop 0.875, resize to 224, the same content as SimCLR's eval crop.
  # A run pretrained on crops of the 256 px central square resumes on that
  # input with --config.data.host_image_size=256 --config.data.random_crop_from=center_square.
  config.data.host_image_size = 320
  config.data.test_split = 'validation'

  config.augment.jitter_strength = 1.0
  config.augment.blur_prob = 0.5
  config.augment.brightness_mode = 'additive'  # v1's brightness
  # The bfloat16 model sees each view rounded to 8 bits of mantissa; the crop's
  # resampling and the blur with the backend's fast matmul (TF32 on a GPU: 10
  # bits) lose nothing it would see, and on a GPU both run faster than at
  # 'highest' (benchmarks/NOTES.md, the GPU augmentation profile).
  config.augment.matmul_precision = 'default'

  config.model.resnet.depth = 50
  config.model.resnet.stem = 'imagenet'
  config.model.num_proj_layers = 2
  config.model.dtype = 'bfloat16'

  config.optim.name = 'lars'
  config.optim.learning_rate = 0.3
  config.optim.lr_scaling = 'linear'
  config.optim.weight_decay = 1e-6
  config.optim.warmup_epochs = 10

  if arg in ('2x', '4x'):
    config.model.resnet.width_multiplier = int(arg[0])
  elif arg:
    raise ValueError(f"configs/imagenet_simclr_v1.py takes '', '2x' or '4x', not {arg!r}.")
  return config
