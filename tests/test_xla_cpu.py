"""kernels.xla_cpu: the process-wide flag and its per-compile twin give the same program."""

import os
import re
import subprocess
import sys

import pytest

from contrastive_jax.kernels import xla_cpu

# A conv, a dot and a BatchNorm-like reduction: each kind of op the YNNPACK
# fusion list decides about. Printed as optimised HLO without metadata.
_PROBE = '''
import re, sys
import jax, jax.numpy as jnp
from jax import lax

def probe(x, w, a):
  y = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  mean = y.mean((0, 1, 2))
  return jax.nn.relu(y - mean), a @ a.T, (y * y).sum((0, 1, 2))

def hlo(options=None):
  args = (jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32)), jnp.ones((64, 32)))
  lowered = jax.jit(probe).lower(*args)
  compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
  text = re.sub(r', metadata=\\{[^}]*\\}', '', compiled.as_text())
  # Source locations (these differ between a test and a subprocess) go too.
  return re.sub(r'^(FileNames|FunctionNames|FileLocations|StackFrames)\\n.*?\\n\\n', '', text,
                flags=re.S | re.M)
'''


def _hlo_in_subprocess(extra_xla_flags: str) -> str:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {extra_xla_flags}".strip())
  env.pop('CONTRASTIVE_JAX_XLA_DEFAULTS', None)
  out = subprocess.run([sys.executable, '-c', _PROBE + '\nsys.stdout.write(hlo())'],
                       env=env, capture_output=True, text=True, timeout=300, check=True)
  return out.stdout


def _entry(hlo: str) -> str:
  return re.search(r'\nENTRY .*?\n}', hlo, re.S).group(0)


def _hlo_here(options):
  scope: dict = {}
  exec(_PROBE, scope)  # pylint: disable=exec-used
  return scope['hlo'](options)


@pytest.mark.skipif(not xla_cpu._jaxlib_at_least(0, 10), reason='the flag needs jaxlib >= 0.10')
def test_compiler_options_match_the_process_flag(monkeypatch):
  monkeypatch.delenv('CONTRASTIVE_JAX_XLA_DEFAULTS', raising=False)
  assert 'xla_cpu_experimental_ynn_fusion_type' not in os.environ.get('XLA_FLAGS', '')
  options = xla_cpu.compiler_options('cpu')
  assert options, 'no per-compile options on jaxlib >= 0.10 with stock XLA_FLAGS'
  flagged = _hlo_in_subprocess(xla_cpu.EIGEN_CONV_FLAG)
  stock = _hlo_here(None)
  # The flag must matter for this probe, or the equality below would prove
  # nothing: stock XLA wraps the convolution in a YNNPACK fusion, the flag
  # leaves it a plain (Eigen) convolution in the entry computation.
  assert 'convolution(' not in _entry(stock) and 'convolution(' in _entry(flagged)
  assert '__ynn' in _entry(flagged)  # the dot and the reductions stay on YNNPACK
  assert _hlo_here(options) == flagged


def test_compiler_options_empty_where_they_do_not_apply(monkeypatch):
  monkeypatch.delenv('CONTRASTIVE_JAX_XLA_DEFAULTS', raising=False)
  assert xla_cpu.compiler_options('gpu') == {}
  assert xla_cpu.compiler_options('tpu') == {}
  monkeypatch.setenv('CONTRASTIVE_JAX_XLA_DEFAULTS', '0')
  assert xla_cpu.compiler_options('cpu') == {}
  monkeypatch.delenv('CONTRASTIVE_JAX_XLA_DEFAULTS')
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=')
  assert xla_cpu.compiler_options('cpu') == {}  # the user's own setting stands


def test_apply_defaults_appends_once_and_respects_the_user(monkeypatch):
  monkeypatch.delenv('CONTRASTIVE_JAX_XLA_DEFAULTS', raising=False)
  monkeypatch.setattr(xla_cpu, '_jaxlib_at_least', lambda major, minor: True)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  assert xla_cpu.apply_defaults()
  assert os.environ['XLA_FLAGS'] == ('--xla_force_host_platform_device_count=8 '
                                     + xla_cpu.EIGEN_CONV_FLAG)
  assert not xla_cpu.apply_defaults()  # already there: not added twice
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=')
  assert not xla_cpu.apply_defaults()
  assert os.environ['XLA_FLAGS'] == '--xla_cpu_experimental_ynn_fusion_type='
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setenv('CONTRASTIVE_JAX_XLA_DEFAULTS', '0')
  assert not xla_cpu.apply_defaults()
  assert os.environ['XLA_FLAGS'] == ''
  monkeypatch.setattr(xla_cpu, '_jaxlib_at_least', lambda major, minor: False)
  monkeypatch.delenv('CONTRASTIVE_JAX_XLA_DEFAULTS')
  assert not xla_cpu.apply_defaults()  # older jaxlib aborts on unknown flags
  assert os.environ['XLA_FLAGS'] == ''
