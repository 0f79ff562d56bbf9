"""Text pretraining: a GRU sentence encoder on WordNet noun glosses (SimCLR's NT-Xent).

  apt-get install wordnet-base      # WordNet 3.0 under /usr/share/wordnet
  python -m contrastive_jax.pretrain --config=configs/text_wordnet.py --workdir=/tmp/cj_text
  python -m contrastive_jax.finetune --config=configs/text_finetune.py:1 \
      --config.init_from=/tmp/cj_text --workdir=/tmp/cj_text_ft1
  python -m contrastive_jax.eval --config=configs/eval.py --config.init_from=/tmp/cj_text \
      --workdir=/tmp/cj_text

`:tiny` (tests, seconds) and `:embedded` (the quickstart, no install step) use
the class-balanced gloss subset shipped in the package. Each example is a
definition ("a domesticated carnivorous mammal ...") labelled by its noun
lexicographer file (26 classes); labels are read only by the online probe.
The views are text edits of the same definition (config.text_augment), each
view also passing through its own dropout (SimCSE, Gao et al. 2021).
"""

from contrastive_jax import config_defaults


def get_config(arg: str | None = None):
  config = config_defaults.pretrain_defaults()
  config.seed = 0
  config.batch_size = 256
  config.num_epochs = 4
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  config.summary_images = 0

  config.data.source = 'wordnet_glosses'
  config.data.val_max_class_fraction = 0.5   # small classes keep half for training
  config.data.val_examples = 2600       # 100 per class: choices are made here, not on test
  config.data.tokenizer_kind = 'word'
  config.data.vocab_size = 20_000
  config.data.min_count = 2
  config.data.max_length = 32
  config.data.length_buckets = 16       # batches of similar lengths, padding cut to a
  config.data.length_quantum = 4        # multiple of 4 (benchmarks/text_step.py)

  config.model.name = 'rnn'
  config.model.rnn.cell = 'gru'
  config.model.rnn.embed_dim = 128
  config.model.rnn.hidden_dim = 256
  config.model.rnn.num_layers = 1
  config.model.rnn.bidirectional = False
  config.model.rnn.pooling = 'mean'
  config.model.rnn.dropout = 0.1
  config.model.num_proj_layers = 2
  config.model.proj_dim = 128

  config.simclr.temperature = 0.1
  config.optim.name = 'adamw'
  config.optim.learning_rate = 1e-3
  config.optim.lr_scaling = 'none'
  config.optim.weight_decay = 1e-5
  config.optim.warmup_fraction = 0.05

  if arg in ('tiny', 'embedded'):
    config.data.source = 'embedded_text'
    config.data.val_examples = 260
    config.data.vocab_size = 4000
    config.data.min_count = 1
    config.num_epochs = 20
    config.text_augment.synonym = 0.0   # no WordNet install needed
  if arg == 'tiny':  # for tests: seconds, not minutes
    config.batch_size = 32
    config.total_steps = 6
    config.log_every_steps = 2
    config.checkpoint_every_steps = 3
    config.data.max_length = 16
    config.model.rnn.embed_dim = 16
    config.model.rnn.hidden_dim = 16
    config.model.proj_dim = 16
  elif arg not in (None, '', 'embedded'):
    raise ValueError(f"configs/text_wordnet.py: unknown argument {arg!r}; use '', "
                     "'embedded' or 'tiny'.")
  return config
