"""Every config key, declared once, with its default and its valid choices.

Config files under `configs/` start from `pretrain_defaults()` (or the fine-tune /
eval variants) and override what their recipe changes. Code reads keys; it never
re-declares a default. Plug-ins declare their own sections: each method its
`config.<method>` (methods/), each encoder its `config.model.<encoder>`
(models/encoders.py); the CPU kernels `config.kernels` (kernels/backend.py).
`validate(config)` runs before anything compiles, so a typo or an unknown
choice fails in the first second with the key's name; valid plug-in names
come from their registries.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from contrastive_jax import methods, models
from contrastive_jax.data import registry as data_registry
from contrastive_jax.kernels import backend as kernels_backend
from contrastive_jax.text import views as text_views


def augment_defaults() -> ml_collections.ConfigDict:
  """SimCLR's pretraining augmentation (Chen et al. 2020, appendix A)."""
  return ml_collections.ConfigDict(dict(
      crop_area_min=0.08,          # random resized crop: area fraction U(min, max)
      crop_area_max=1.0,
      crop_aspect_min=3.0 / 4.0,   # aspect ratio, log-uniform in (min, max)
      crop_aspect_max=4.0 / 3.0,
      crop_max_attempts=100,       # after this many misses: the whole image
      # Precision of the augmentation's matmuls (the crop's bicubic resampling,
      # the blur's band matrices): 'highest' (exact float32, as jax.image) |
      # 'default' (the backend's fast float32 matmul: TF32 on recent GPUs,
      # bfloat16 passes on TPU, the same on CPU).
      matmul_precision='highest',
      flip_prob=0.5,
      jitter_prob=0.8,
      jitter_strength=1.0,         # s: 1.0 ImageNet, 0.5 CIFAR
      brightness_mode='multiplicative',  # 'multiplicative' (v2) | 'additive' (v1)
      grayscale_prob=0.2,
      blur_prob=0.0,               # 0.5 for ImageNet recipes
      blur_sigma_min=0.1,
      blur_sigma_max=2.0,
      blur_kernel_fraction=0.1,    # kernel side = odd(fraction x image side)
      solarize_prob=0.0,
      solarize_threshold=0.5,
  ))


def model_defaults() -> ml_collections.ConfigDict:
  """config.model: see models.model_defaults (the encoder sections are the plug-ins')."""
  return models.model_defaults()


def data_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      source='embedded',           # a name in contrastive_jax.data.registry: 'embedded' |
                                   # 'idx' | 'tfds' | 'folder' | what a plug-in registers
      name='fashion_mnist',        # tfds name for source='tfds'
      data_dir='',                 # tfds data_dir ('' = tfds default)
      idx_dir='/usr/share/datasets/fashion-mnist',  # source='idx'
      folder='',                   # source='folder': FOLDER/<class>/ (flat) or
                                   # FOLDER/<train_split>/<class>/ and <test_split>/
      test_examples=0,             # source='folder' without FOLDER/<test_split>/: test
                                   # images carved from the folder (class-balanced,
                                   # fixed seed); 0 = 10% of it
      skip_bad_files=False,        # source='folder': leave out images that cannot be
                                   # read (their count is logged) instead of failing
      train_split='train',
      test_split='test',
      val_examples=0,              # carved from the end of train (balanced); 0 = none
      val_max_class_fraction=1.0,  # a class gives val at most this fraction of itself
      image_size=0,                # network input side; 0 = the source's own size
      host_image_size=0,           # varying-size data: side S the host resizes to
                                   # (e.g. 320 for a 224 crop); 0 = image_size
      random_crop_from='image',    # varying-size training streams: 'image' crops
                                   # from the whole photo (letterboxed: longer side
                                   # at most S; SimCLR's crop), 'center_square' from its
                                   # central square resized to S x S. Evaluation and
                                   # in-memory loads always use the central square.
      in_memory=True,              # False: stream with tf.data (ImageNet-size data)
      shuffle_buffer=10_000,       # streaming only
      prefetch=2,
      # Text sources (modality 'text': 'wordnet_glosses' | 'embedded_text' |
      # 'text_file' | 'tfds_text'; see contrastive_jax/data/text_data.py).
      wordnet_dir='',              # '' = $WNSEARCHDIR or /usr/share/wordnet
      path='',                     # source='text_file': .txt | .csv | .tsv | .jsonl | folder
      test_path='',                # its test split; '' = a carve of test_fraction
      test_fraction=0.1,           # stratified, fixed seed
      text_column='text',          # csv / tsv / jsonl column (tfds: feature) of the text
      label_column='',             # its label column; '' = unlabelled
      tokenizer='',                # tokenizer.json or a workdir holding one; '' = pretrain
                                   # trains one on the training text (saved in the workdir)
      tokenizer_kind='word',       # 'word' (word-level) | 'wordpiece'
      vocab_size=20_000,           # the trained tokenizer's largest vocabulary
      min_count=2,                 # word-level: words seen fewer times are [UNK]
      max_length=32,               # tokens per example (longer texts keep their start)
      length_buckets=0,            # > 0: pretraining batches drawn by length, sorting runs
                                   # of this many batches (less padding; pipeline.py)
      length_quantum=0,            # > 0: a batch keeps only the columns its longest
                                   # example needs, rounded up to a multiple of this
  ))


def optim_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name='lars',                 # 'lars' | 'sgd' | 'adamw'
      learning_rate=0.3,           # base rate, scaled by lr_scaling
      lr_scaling='linear',         # 'linear' (x B/256) | 'sqrt' (x sqrt(B)) | 'none'
      weight_decay=1e-6,
      momentum=0.9,
      nesterov=False,
      trust_coefficient=1e-3,
      warmup_epochs=10.0,          # used when warmup_fraction == 0
      warmup_fraction=0.0,         # > 0: warmup = fraction x total steps (v2: 0.05)
      schedule='cosine',           # 'cosine' | 'constant'
  ))


def pretrain_defaults() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Keys every binary shares.
  config.seed = 0
  config.batch_size = 256          # global, over all processes and devices
  config.num_epochs = 100
  config.total_steps = 0           # > 0 overrides num_epochs
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.stop_at_step = 0          # > 0: checkpoint and exit at this step (run in chunks)
  config.multihost = 'auto'        # 'auto' (from the environment) | 'yes' | 'no'
  config.nan_policy = 'stop'       # a NaN / inf loss, gradient or parameter: 'stop' the run
                                   # (exit 3, nothing non-finite saved) | 'skip_step' (drop
                                   # the batch, keep the previous state)

  config.method = 'simclr'         # a name in methods.METHODS: 'simclr' | 'supcon'
  for name in methods.METHODS.names():   # each method's keys: config.simclr.temperature, ...
    config[name] = methods.METHODS.get(name).defaults()
  config.probe = True              # online linear probe on stop_gradient(h), trained by
                                   # the main optimizer and schedule (as the official code)
  config.summary_images = 8        # augmented pairs written to TensorBoard at start

  config.data = data_defaults()
  config.augment = augment_defaults()
  config.text_augment = text_views.text_augment_defaults()   # the text modality's views
  config.model = model_defaults()
  config.optim = optim_defaults()
  config.kernels = kernels_backend.kernels_defaults()
  return config


CHOICES: dict[str, tuple[Any, ...]] = {
    'multihost': ('auto', 'yes', 'no'),
    'nan_policy': ('stop', 'skip_step'),
    'augment.brightness_mode': ('multiplicative', 'additive'),
    'augment.matmul_precision': ('highest', 'default'),
    'model.dtype': ('float32', 'bfloat16'),
    'kernels.conv': kernels_backend.CONV_POLICIES,
    'data.random_crop_from': ('image', 'center_square'),
    'data.tokenizer_kind': ('word', 'wordpiece'),
    'optim.name': ('lars', 'sgd', 'adamw'),
    'optim.lr_scaling': ('linear', 'sqrt', 'none'),
    'optim.schedule': ('cosine', 'constant'),
}


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def _registry_choices(config: ml_collections.ConfigDict) -> dict[str, tuple[Any, ...]]:
  """Keys whose valid values are the names plug-ins registered."""
  out = {'data.source': data_registry.names()}
  if 'method' in config:
    out['method'] = methods.METHODS.names()
  if 'model' in config:
    out['model.name'] = models.ENCODERS.names()
  return out


# Shared keys: (key, test, what the value must be). Checked when present.
_RANGES = (
    ('seed', lambda v: isinstance(v, int) and v >= 0, 'an integer >= 0'),
    ('batch_size', lambda v: v > 0, '> 0 (the global batch, over all devices)'),
    ('total_steps', lambda v: v >= 0, '>= 0 (0 = from num_epochs)'),
    ('stop_at_step', lambda v: v >= 0, '>= 0 (0 = run to the end)'),
    ('log_every_steps', lambda v: v > 0, '> 0 (a large value logs rarely)'),
    ('checkpoint_every_steps', lambda v: v > 0, '> 0 (a large value checkpoints rarely)'),
    ('keep_checkpoints', lambda v: v >= 1, '>= 1'),
)


def _validate_ranges(config: ml_collections.ConfigDict) -> None:
  for key, ok, what in _RANGES:
    if key in config and not ok(config[key]):
      raise ValueError(f'config.{key}={config[key]!r} must be {what}.')
  if config.get('total_steps', 1) == 0 and 'num_epochs' in config and not config.num_epochs > 0:
    raise ValueError(f'config.num_epochs={config.num_epochs} must be > 0 (or set '
                     'config.total_steps > 0).')


def validate(config: ml_collections.ConfigDict,
             choices: dict[str, tuple[Any, ...]] | None = None) -> None:
  """Raises ValueError naming the first key whose value is not a valid choice."""
  if 'mode' in config:
    raise ValueError(f"config.mode={config.mode!r} is now config.method (and the method's "
                     f"keys live in config.{config.mode}); write --config.method="
                     f"{config.mode}, or pass the config through config_migration.migrate().")
  if choices is None:
    choices = {**_registry_choices(config), **CHOICES}
  for key, valid in choices.items():
    try:
      value = _get(config, key)
    except (KeyError, AttributeError):
      continue  # a binary's config need not carry every section
    if value not in valid:
      raise ValueError(
          f'config.{key}={value!r} is not valid; choose one of {valid} '
          f'(e.g. --config.{key}={valid[0]!r}).')
  _validate_ranges(config)
  if 'kernels' in config and config.kernels.get('conv_xla_wgrad_below', 0) < 0:
    raise ValueError(f'config.kernels.conv_xla_wgrad_below={config.kernels.conv_xla_wgrad_below} '
                     'must be >= 0 (px; 0 = our weight gradient on every map).')
  if 'model' in config:
    models.validate(config.model)
  if 'method' in config:
    methods.build(config)  # the method validates its own section
  if 'text_augment' in config:
    text_views.validate(config.text_augment)
  if 'augment' in config:
    a = config.augment
    if not 0 < a.crop_area_min <= a.crop_area_max <= 1:
      raise ValueError('config.augment.crop_area_min/max must satisfy '
                       f'0 < min <= max <= 1; got {a.crop_area_min}, {a.crop_area_max}.')
    for key in ('flip_prob', 'jitter_prob', 'grayscale_prob', 'blur_prob', 'solarize_prob'):
      if not 0.0 <= a[key] <= 1.0:
        raise ValueError(f'config.augment.{key}={a[key]} must be in [0, 1].')


def finetune_defaults() -> ml_collections.ConfigDict:
  """Fine-tuning a pretrained encoder (or the same network from scratch) on a
  class-balanced labelled subset; `contrastive_jax.finetune` reads these keys.

  The optimizer defaults are SimCLR v1's fine-tuning recipe (Nesterov momentum
  0.9, LR 0.05 x B/256, no weight decay, no warmup, cosine decay);
  configs/finetune_v1.py and finetune_v2.py set the epochs per label fraction.
  """
  config = ml_collections.ConfigDict()
  # Keys every binary shares (same meaning as in pretrain_defaults).
  config.seed = 0
  config.batch_size = 256
  config.num_epochs = 60           # epochs over the labelled subset
  config.total_steps = 0           # > 0 overrides num_epochs
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.stop_at_step = 0          # > 0: checkpoint and exit at this step (run in chunks)
  config.multihost = 'auto'
  config.nan_policy = 'stop'       # as in pretrain_defaults

  # What to start from.
  config.init_from = ''            # pretrain workdir to restore; '' = train from scratch
  config.init_step = -1            # its checkpoint step; -1 = the latest
  config.model_from = ''           # workdir whose config.model is used (architecture
                                   # only); '' = init_from's, else config.model
  config.ft_proj_selector = 0      # classifier input: 0 = h, k = k-th projection layer's
                                   # output (v2: 1), -1 = the last (z)
  config.fine_tune_after_block = -1  # -1 train all; k freeze the encoder's groups 0..k
                                     # (ResNet: 0 stem, k stages 1..k); the encoder's
                                     # freeze_all (ResNet: 4) trains only the classifier
  config.zero_init = True          # classifier starts at zero logits
  # Labelled subset of train (minus the val carve), class-balanced, saved to
  # WORKDIR/label_subset.json and reused from there.
  config.label_fraction = 0.01     # 0.01 | 0.1 | 1.0 ...
  config.labels_per_class = 0      # > 0 overrides label_fraction
  config.label_seed = 0            # the subset's seed (kept apart from `seed`)
  config.save_logits = False       # WORKDIR/logits_<split>.npz at the end (tests, analysis)

  config.data = data_defaults()
  config.augment = augment_defaults()   # only the crop + flip keys are used
  config.text_augment = text_views.text_augment_defaults()   # only the finetune_* keys
  config.model = model_defaults()
  config.optim = optim_defaults()
  config.kernels = kernels_backend.kernels_defaults()
  config.optim.name = 'sgd'
  config.optim.learning_rate = 0.05
  config.optim.lr_scaling = 'linear'
  config.optim.weight_decay = 0.0
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.warmup_epochs = 0.0
  config.optim.warmup_fraction = 0.0
  config.optim.schedule = 'cosine'
  return config
