r"""SimCLR v2 distillation: a fine-tuned teacher labels the unlabeled training images.

  python -m contrastive_jax.distill --config=configs/distill.py --workdir=/tmp/distill \
      --config.teacher=/tmp/ft

  get_config()         'self': the student has the teacher's architecture
                       (or init_from's), tau = 0.1 (v2 self-distillation)
  get_config('small')  'small': the student is config.model (set it with
                       --config.model.*; defaults to a ResNet-18), tau = 1.0
                       (v2 big-to-small)

Loss: tau^2 x CE(softmax(teacher / tau), student / tau) on crop + flip views
the teacher sees too; --config.alpha > 0 mixes in the labelled cross entropy of
the teacher's label subset. The optimizer (Nesterov momentum, LR 0.1 x B/256,
weight decay 1e-4, 5% warmup, cosine) is our choice for students trained from
scratch on small data; v2 trains its students for 400 ImageNet epochs.
Expected on 2 CPU cores with the embedded data and a configs/smoke.py-sized
student: about 1 minute per 100 steps at batch 256.
"""

from contrastive_jax import distillation


def get_config(arg: str | None = None):
  arg = arg or 'self'
  if arg not in ('self', 'small'):
    raise ValueError(f"configs/distill.py:{arg}; choose 'self' or 'small'.")
  config = distillation.distill_defaults()
  config.batch_size = 256
  config.num_epochs = 30
  config.log_every_steps = 25
  config.checkpoint_every_steps = 500

  config.temperature = 0.1 if arg == 'self' else 1.0
  config.alpha = 0.0
  config.ft_proj_selector = 0
  config.fine_tune_after_block = -1
  config.zero_init = False

  config.data.source = 'embedded'
  config.data.val_examples = 1000

  if arg == 'small':
    config.model_from = ''       # the student is config.model
    config.model.resnet.depth = 18
    config.model.resnet.stem = 'cifar'

  config.optim.name = 'sgd'
  config.optim.learning_rate = 0.1
  config.optim.lr_scaling = 'linear'
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.weight_decay = 1e-4
  config.optim.warmup_fraction = 0.05
  config.optim.schedule = 'cosine'
  return config
