"""Text pretraining on AG News (tfds 'ag_news_subset': 120k news descriptions,
4 classes), with the GRU encoder of configs/text_wordnet.py.

  tfds build ag_news_subset          # once, where the network reaches it
  python -m contrastive_jax.pretrain --config=configs/text_agnews.py --workdir=/tmp/cj_agnews
  python -m contrastive_jax.finetune --config=configs/text_finetune.py:1 \
      --config.init_from=/tmp/cj_agnews --workdir=/tmp/cj_agnews_ft1
"""

import importlib.util
import os


def _text_wordnet():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'text_wordnet.py')
  spec = importlib.util.spec_from_file_location('configs_text_wordnet', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  config = _text_wordnet().get_config(None)
  config.data.source = 'tfds_text'
  config.data.name = 'ag_news_subset'
  config.data.text_column = 'description'
  config.data.train_split = 'train'
  config.data.test_split = 'test'
  config.data.val_examples = 4000
  config.data.max_length = 48
  config.data.vocab_size = 30_000
  config.num_epochs = 2
  if arg:
    raise ValueError(f'configs/text_agnews.py takes no argument; got {arg!r}.')
  return config
