"""Runs every test with 8 simulated CPU devices, so sharding paths are exercised."""

import os

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session')
def pretrain_dir(tmp_path_factory) -> str:
  """configs/smoke.py:tiny pretrained once for the whole session (6 steps,
  checkpoints at 3 and 6). Shared by eval, finetune and distill tests: read it,
  never write to it (copy it first, as test_eval's _copy_run does)."""
  from contrastive_jax import pretrain  # pylint: disable=g-import-not-at-top
  from tests.helpers import load_config  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('smoke_pretrain'))
  pretrain.train_and_evaluate(load_config('smoke', 'tiny'), workdir)
  return workdir
