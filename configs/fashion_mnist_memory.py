"""Fashion-MNIST recipes for the batch-size / memory comparison (benchmarks/memory_methods.py).

  python -m contrastive_jax.pretrain --config=configs/fashion_mnist_memory.py:simclr64_memory \
      --workdir=/tmp/cj_fmnist_mem
  python benchmarks/memory_methods.py --budget-minutes 20      # all five, same budget

Every variant is configs/fashion_mnist.py's recipe (data, 20 px crops, the
encoder and head, LARS at 0.075 x sqrt(B), 5% warmup, T 0.2) with only the
method and the batch changed:

  simclr512        SimCLR at batch 512 (the large-batch reference)
  simclr64         SimCLR at batch 64: 127 negatives per anchor
  simclr64_memory  SimCLR at batch 64 plus SimCLR v2's memory: 4,096 keys of a
                   momentum network (m 0.99) as extra negatives
  moco             MoCo v2 at batch 64: queue of 4,096 keys, T 0.2, m 0.99
  byol             BYOL at batch 256 (no negatives; BYOL's batch-size ablation
                   loses little down to 256, and global BN at 64 is noisier),
                   m 0.99 -> 1 on a cosine (0.99: BYOL's short-run preset)

m 0.99 rather than MoCo's 0.999: a 20-minute CPU budget buys a few thousand
steps, and with 0.999 the momentum network would lag ~1,000 of them (MoCo's
ablation: 0.99 trains well; its CIFAR demos use it). 4,096 keys is MoCo's CIFAR
queue size, 64 steps of batch 64.
"""

import importlib.util
import os

VARIANTS = ('simclr512', 'simclr64', 'simclr64_memory', 'moco', 'byol')
QUEUE = 4096


def _fashion_mnist():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fashion_mnist.py')
  spec = importlib.util.spec_from_file_location('configs_fashion_mnist', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg: str | None = None):
  if arg not in VARIANTS:
    raise ValueError(f'configs/fashion_mnist_memory.py takes one of {VARIANTS}, not {arg!r}.')
  config = _fashion_mnist()
  if arg == 'simclr512':
    config.batch_size = 512
  elif arg == 'simclr64':
    config.batch_size = 64
  elif arg == 'simclr64_memory':
    config.batch_size = 64
    config.simclr.memory_size = QUEUE
    config.simclr.momentum = 0.99
  elif arg == 'moco':
    config.method = 'moco'
    config.batch_size = 64
    config.moco.queue_size = QUEUE
    config.moco.temperature = 0.2
    config.moco.momentum = 0.99
  elif arg == 'byol':
    config.method = 'byol'
    config.batch_size = 256
    config.byol.momentum = 0.99
    config.byol.momentum_schedule = 'cosine'
  return config
