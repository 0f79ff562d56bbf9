"""oneDNN convolutions on CPU, called from XLA through JAX's FFI.

Why: oneDNN, the library behind PyTorch's CPU convolutions, runs ResNet's
convolution layers at a higher rate than XLA:CPU's convolutions (Eigen or
YNNPACK) and than cpu_conv.py's weight gradient, and that gap is most of what
a PyTorch CPU training step has over this project's. So here all three passes
of every convolution (forward, input and weight gradient) run in oneDNN.
benchmarks/NOTES.md has the measurements.

How: onednn_conv.cc defines three FFI handlers. On first use it is compiled
with g++ against the oneDNN of the `onednn-cpu-gomp` / `onednn-devel-cpu-gomp`
wheels (installed with the package on Linux x86_64) into a per-user cache
($CONTRASTIVE_JAX_CACHE, default ~/.cache/contrastive_jax), loaded, and its
handlers registered with XLA. `conv_general_dilated` has lax's signature and a
custom VJP whose backward pass calls the two gradient handlers.

When it is not used: anything but a 2-D NHWC/HWIO float32 convolution without
dilation or groups goes to cpu_conv (which itself sends the rest to lax).
`available()` is False, with `unavailable_reason()` saying why, when the
wheels, a C++ compiler or jax.ffi are missing; backend.conv_cls (conv='auto')
then picks cpu_conv.Conv. It picks cpu_conv.Conv too when the process has
more than one device: XLA's SPMD partitioner cannot split a custom call, so a
batch-sharded step would compute each convolution on the whole batch on every
device (correct, as tests/test_onednn_conv.py checks, but not fast).
"""

from __future__ import annotations

import functools
import importlib.metadata
import pathlib
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from contrastive_jax.kernels import cpu_conv, ffi_build

_SOURCE = pathlib.Path(__file__).with_name('onednn_conv.cc')
_TARGETS = ('OnednnConvFwd', 'OnednnConvBwdData', 'OnednnConvBwdWeights')
_WHEELS = ('onednn-cpu-gomp', 'onednn-devel-cpu-gomp')
_INSTALL_HINT = ('pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0 '
                 '(installed with contrastive_jax on Linux x86_64) and a C++ compiler (g++)')


def _wheel_file(dist: str, suffix: str) -> pathlib.Path:
  """The installed path of the file of wheel `dist` whose path ends with
  `suffix` (e.g. 'lib/libdnnl.so.3')."""
  try:
    files = importlib.metadata.files(dist) or []
  except importlib.metadata.PackageNotFoundError as e:
    raise RuntimeError(f'the {dist} wheel is not installed') from e
  for f in files:  # paths relative to site-packages: '../../libdnnl.so.3'
    path = pathlib.Path(f.locate()).resolve()
    if path.as_posix().endswith(suffix):
      return path
  raise RuntimeError(f'the {dist} wheel has no {suffix}')


def build(out_dir: pathlib.Path | None = None) -> pathlib.Path:
  """Compiles onednn_conv.cc into a shared library (once per source, jaxlib
  and oneDNN; later calls return the cached file, see ffi_build). Raises
  RuntimeError saying what is missing."""
  lib = _wheel_file(_WHEELS[0], 'lib/libdnnl.so.3')
  include = _wheel_file(_WHEELS[1], 'include/oneapi/dnnl/dnnl.hpp').parents[2]
  return ffi_build.compile_library(
      _SOURCE, [f'-I{include}', str(lib), f'-Wl,-rpath,{lib.parent}'], out_dir)


@functools.lru_cache(maxsize=None)
def _load() -> str:
  """'' once the handlers are registered, else why they could not be."""
  why = ffi_build.load_and_register('oneDNN convolutions', build, _TARGETS)
  return f'{why} (needs: {_INSTALL_HINT})' if why else ''


def available() -> bool:
  """True when the oneDNN handlers are built and registered with XLA:CPU."""
  return not _load()


def unavailable_reason() -> str:
  return _load()


# ----------------------------------------------------------------------------
# The convolution and its VJP.

Pads = tuple[tuple[int, int], tuple[int, int]]


def _out_size(n: int, k: int, s: int, lo: int, hi: int) -> int:
  return (n + lo + hi - k) // s + 1


def _attrs(stride: int, pads: Pads) -> dict[str, np.int64]:
  (pt, pb), (pl, pr) = pads
  return dict(s=np.int64(stride), pt=np.int64(pt), pl=np.int64(pl), pb=np.int64(pb),
              pr=np.int64(pr))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, w: jax.Array, stride: int, pads: Pads) -> jax.Array:
  (pt, pb), (pl, pr) = pads
  out = jax.ShapeDtypeStruct((x.shape[0], _out_size(x.shape[1], w.shape[0], stride, pt, pb),
                              _out_size(x.shape[2], w.shape[1], stride, pl, pr),
                              w.shape[3]), jnp.float32)
  return jax.ffi.ffi_call('OnednnConvFwd', out)(x, w, **_attrs(stride, pads))


def _conv_fwd(x, w, stride, pads):
  return _conv(x, w, stride, pads), (x, w)


def _conv_bwd(stride, pads, res, dy):
  x, w = res
  attrs = _attrs(stride, pads)
  dx = jax.ffi.ffi_call('OnednnConvBwdData', jax.ShapeDtypeStruct(x.shape, x.dtype))(
      dy, w, **attrs)
  dw = jax.ffi.ffi_call('OnednnConvBwdWeights', jax.ShapeDtypeStruct(w.shape, w.dtype))(
      x, dy, **attrs)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array,
                         window_strides: Sequence[int],
                         padding: Any,
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None,
                         feature_group_count: int = 1,
                         batch_group_count: int = 1,
                         precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
  """Same signature as lax.conv_general_dilated. 2-D NHWC/HWIO float32
  convolutions without dilation or groups, with equal strides, run in oneDNN
  (forward and both gradients; float32 is exact in oneDNN, so `precision`
  has nothing to choose); anything else goes to cpu_conv.conv_general_dilated."""
  strides = tuple(int(s) for s in window_strides)
  supported = (cpu_conv.is_plain_nhwc_conv(lhs, rhs, lhs_dilation, rhs_dilation,
                                           dimension_numbers, feature_group_count,
                                           batch_group_count, preferred_element_type)
               and strides[0] == strides[1] and lhs.dtype == jnp.float32)
  if not supported or not available():
    return cpu_conv.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(lhs, rhs, strides[0], pads)


class Conv(nn.Conv):
  """flax.linen.Conv whose convolutions run in oneDNN (see module doc).

  Named `Conv` like cpu_conv.Conv, so the parameter tree ('Conv_0', ...,
  'kernel' [kh, kw, cin, cout]) is nn.Conv's and checkpoints move freely
  between the implementations.
  """
  conv_general_dilated: Callable[..., jax.Array] | None = conv_general_dilated


OnednnConv = Conv  # alias; its __name__ is still 'Conv'
