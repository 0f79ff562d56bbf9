r"""Fine-tuning a pretrained text encoder on 1% / 10% / 100% of the labels, or
its linear evaluation (`:linear`: frozen encoder, every label).

  python -m contrastive_jax.finetune --config=configs/text_finetune.py:1 \
      --config.init_from=/tmp/cj_text --workdir=/tmp/cj_text_ft1
  # the same network from scratch (the baseline the issue compares with):
  python -m contrastive_jax.finetune --config=configs/text_finetune.py:1 \
      --config.model_from=/tmp/cj_text --workdir=/tmp/cj_text_scratch1

The data, its val carve and the tokenizer are those of configs/text_wordnet.py
(the tokenizer comes from init_from, or model_from for the from-scratch run);
`:tiny` fine-tunes a configs/text_wordnet.py:tiny run in seconds. Adam (not
SimCLR's Nesterov SGD): recurrent networks train poorly with plain momentum
SGD at these batch sizes. Inputs see the light text views of
config.text_augment's finetune keys.
"""

from contrastive_jax import config_defaults
from contrastive_jax.models import classifier

FRACTIONS = {'1': 0.01, '10': 0.1, '100': 1.0, 'linear': 1.0, 'tiny': 0.1}
EPOCHS = {'1': 80, '10': 10, '100': 3, 'linear': 3, 'tiny': 1}
BATCH = {'1': 64, '10': 128, '100': 256, 'linear': 256, 'tiny': 32}


def get_config(arg: str | None = None):
  arg = arg or '1'
  if arg not in FRACTIONS:
    raise ValueError(f'configs/text_finetune.py:{arg}; choose one of {sorted(FRACTIONS)}.')
  config = config_defaults.finetune_defaults()
  config.label_fraction = FRACTIONS[arg]
  config.num_epochs = EPOCHS[arg]
  config.batch_size = BATCH[arg]
  config.log_every_steps = 20
  config.checkpoint_every_steps = 500

  config.data.source = 'wordnet_glosses'
  config.data.val_max_class_fraction = 0.5   # small classes keep half for training
  config.data.val_examples = 2600        # the carve configs/text_wordnet.py makes
  config.data.max_length = 32
  config.data.length_quantum = 4         # each batch cut to its longest text
  config.ft_proj_selector = 0            # the classifier sits on h
  config.fine_tune_after_block = -1      # train everything
  config.zero_init = True

  config.optim.name = 'adamw'
  config.optim.learning_rate = 1e-3
  config.optim.lr_scaling = 'none'
  config.optim.weight_decay = 0.0
  config.optim.warmup_fraction = 0.0
  config.optim.schedule = 'cosine'
  if arg in ('1', '10'):    # chosen on val (benchmarks/NOTES.md, "Text recipe")
    config.optim.learning_rate = 3e-3
  if arg == 'linear':
    config.fine_tune_after_block = classifier.FREEZE_ALL
    config.optim.learning_rate = 3e-3
  if arg == 'tiny':
    config.data.source = 'embedded_text'
    config.data.val_examples = 260
    config.data.max_length = 16
    config.total_steps = 6
    config.log_every_steps = 2
    config.checkpoint_every_steps = 3
  return config
