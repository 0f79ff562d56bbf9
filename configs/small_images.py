r"""SimCLR on a folder of your own images: a few hundred to a few thousand of them.

  python -m contrastive_jax.pretrain --config=configs/small_images.py:/path/to/images \
      --workdir=/tmp/cj_mine
  python -m contrastive_jax.eval --config=configs/eval.py --workdir=/tmp/cj_mine \
      --config.init_from=/tmp/cj_mine --config.linear.feature_norm=none,standardize

What it expects: PNG / JPEG files (any size; colour, or all grayscale) in one
sub-folder per class, either /path/to/images/<class>/ (the flat layout: 10% of
the images, class-balanced, with a fixed seed, become the test split;
config.data.test_examples sets how many) or /path/to/images/train/<class>/ with
/path/to/images/test/<class>/. Each image is resized (shorter side) and
centre-cropped to 32 x 32 when the folder is read. The argument after the
colon is the folder: the validation carve, on which the evaluation makes its
choices, is then 10% of the training images (not smoke.py's fixed 1,000, which
leaves a 1,437-image folder with 437 to train on). Given --config.data.folder
instead, nothing is carved here and the eval binary carves
config.val_fraction (10%) of train itself. An image that cannot be read stops
the run before training, with its name; --config.data.skip_bad_files=True
leaves such files out.

The recipe is a CIFAR-style SimCLR for small images on a small budget: a
three-stage basic-block ResNet whose last feature map, flattened, is the
representation (where a part is in the frame carries the class in small,
centred images), trained for num_epochs passes over the training images (the
step count grows with the folder). benchmarks/small_images.py measures it on a
Fashion-MNIST folder against a logistic regression on the raw pixels.

What to tune, first to last:
  num_epochs (100)             more (200 to 800), while the eval's val accuracy rises;
                               the schedule is cosine, so set it before the run.
  data.image_size (32)         64 for photos whose detail carries the class
                               (about 4x the time per step).
  batch_size (256)             at most the training images; halve it for a few
                               hundred images (and keep num_epochs).
  model.resnet.pool ('flatten') 'avg' when the object moves about the frame.
  augment.crop_area_min (0.2)  higher when a small crop loses the object.
  augment.jitter_strength (0.5) 1.0 when colour does not carry the class.
  model.resnet.base_width (32) 64 on a GPU, or for a longer CPU budget.
"""

from contrastive_jax import config_defaults
from contrastive_jax.data import folder

VAL_FRACTION = 0.1  # of the training images (after the test carve)


def get_config(arg: str | None = None):
  config = config_defaults.pretrain_defaults()
  config.seed = 0
  config.batch_size = 256
  config.num_epochs = 100
  config.log_every_steps = 25
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2

  config.data.source = 'folder'
  config.data.folder = arg or ''
  config.data.image_size = 32
  config.data.val_examples = 0
  if arg:
    # A share of the folder, not a fixed count: a few hundred images keep most
    # of their images for training.
    train = folder.count_images(config.data)['train']
    config.data.val_examples = max(round(VAL_FRACTION * train), 1)

  # Small images: crops below 0.2 of the area keep too little of the object
  # to match its pair; no blur (SimCLR's CIFAR recipe).
  config.augment.crop_area_min = 0.2
  config.augment.jitter_strength = 0.5
  config.augment.blur_prob = 0.0

  config.model.resnet.depth = 0
  config.model.resnet.stage_sizes = (1, 1, 1)
  config.model.resnet.block = 'basic'
  config.model.resnet.base_width = 32
  config.model.resnet.stem = 'cifar'
  config.model.resnet.stem_stride = 2     # 16, 8, 4 px maps at 32 px: a cheap step
  config.model.resnet.pool = 'flatten'    # h = 4 x 4 x 128 at 32 px
  config.kernels.conv_xla_wgrad_below = 16
  config.model.num_proj_layers = 2
  config.model.proj_hidden_dim = 256
  config.model.proj_dim = 64

  config.simclr.temperature = 0.2
  config.optim.name = 'lars'
  config.optim.learning_rate = 0.075   # x sqrt(B): SimCLR's small-batch rule
  config.optim.lr_scaling = 'sqrt'
  config.optim.weight_decay = 1e-6
  config.optim.warmup_fraction = 0.05
  return config
