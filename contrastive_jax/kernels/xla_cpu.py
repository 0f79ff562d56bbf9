"""XLA:CPU settings the binaries apply before JAX starts its CPU backend.

With jaxlib 0.10, XLA:CPU runs convolutions through YNNPACK by default. Moving
them to Eigen (matmuls stay on YNNPACK) makes the forward and input-gradient
convolutions faster and, together with kernels/cpu_conv.py's weight gradient,
the whole ResNet training step (benchmarks/NOTES.md, "Convolution weight
gradient on CPU", has the measurements). Older jaxlibs do not know the flag
and abort on unknown XLA_FLAGS, so it is only added for jaxlib >= 0.10. Set
CONTRASTIVE_JAX_XLA_DEFAULTS=0 to leave XLA_FLAGS alone. Like everything in
contrastive_jax.kernels, the setting is about speed only: it changes neither
the parameters nor the function a model computes (up to float rounding).
"""

from __future__ import annotations

import importlib.metadata
import os

EIGEN_CONV_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
_YNN_OPTION = 'xla_cpu_experimental_ynn_fusion_type'
# EIGEN_CONV_FLAG removes INDIVIDUAL_CONVOLUTION from jaxlib 0.10's default
# YNNPACK list (INDIVIDUAL_DOT, REDUCE, INDIVIDUAL_CONVOLUTION). A per-compile
# option cannot say "remove", so it names what stays; tests/test_xla_cpu.py
# checks that both give the same optimised HLO on the installed jaxlib.
_EIGEN_CONV_YNN_TYPES = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'


def _jaxlib_at_least(major: int, minor: int) -> bool:
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return False
  parts = [int(p) for p in version.split('.')[:2] if p.isdigit()]
  return tuple(parts) >= (major, minor)


def _setting_applies(flags: str) -> bool:
  """Not opted out, not chosen by the user in `flags`, and a jaxlib that knows it."""
  return (os.environ.get('CONTRASTIVE_JAX_XLA_DEFAULTS', '1') != '0'
          and _YNN_OPTION not in flags and _jaxlib_at_least(0, 10))


def apply_defaults() -> bool:
  """Adds EIGEN_CONV_FLAG to XLA_FLAGS; returns whether it did.

  Must run before the first JAX computation (XLA reads XLA_FLAGS when the
  backend starts). A flag the user already set for the same option wins.
  """
  flags = os.environ.get('XLA_FLAGS', '')
  if not _setting_applies(flags):
    return False
  os.environ['XLA_FLAGS'] = f'{flags} {EIGEN_CONV_FLAG}'.strip()
  return True


def compiler_options(backend: str | None = None) -> dict[str, str]:
  """EIGEN_CONV_FLAG as per-compile options for `backend`; {} where it does not apply.

  Empty on non-CPU backends, on jaxlib < 0.10, with CONTRASTIVE_JAX_XLA_DEFAULTS=0,
  and when XLA_FLAGS already sets the option (that process-wide choice stands).
  """
  import jax  # pylint: disable=g-import-not-at-top  (apply_defaults must not import it)
  backend = backend or jax.default_backend()
  if backend != 'cpu' or not _setting_applies(os.environ.get('XLA_FLAGS', '')):
    return {}
  return {_YNN_OPTION: _EIGEN_CONV_YNN_TYPES}
