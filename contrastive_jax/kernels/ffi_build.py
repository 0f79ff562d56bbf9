"""Compiling the package's C++ FFI handlers into cached shared libraries.

The CPU kernels (onednn_conv.cc, sgns_update.cc) ship as source and are
compiled on first use with the machine's C++ compiler against jax.ffi's
headers, into a per-user cache ($CONTRASTIVE_JAX_CACHE, default
~/.cache/contrastive_jax). The file name carries a hash of everything the
binary depends on (source, flags, jax, the CPU when the flags tune for it),
so a changed source or another machine sharing the directory builds its own
file instead of loading a stale or foreign one.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Sequence

import jax


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get('CONTRASTIVE_JAX_CACHE')
                      or pathlib.Path.home() / '.cache' / 'contrastive_jax')


def _cpu_id() -> bytes:
  """The CPU model and its flags, for libraries built with -march=native."""
  try:
    lines = pathlib.Path('/proc/cpuinfo').read_text().splitlines()
  except OSError:
    return platform.processor().encode()
  keep = [l for l in lines if l.startswith(('model name', 'flags'))][:2]
  return '\n'.join(keep).encode()


def compile_library(source: pathlib.Path, flags: Sequence[str] = (),
                    out_dir: pathlib.Path | None = None) -> pathlib.Path:
  """Compiles `source` into `out_dir` (default cache_dir()) as
  <stem>-<hash>.so, or returns the file a previous call built. `flags`
  follow the source on the command line (libraries, -I, -march, ...).
  Raises RuntimeError saying what is missing or what the compiler said."""
  if not hasattr(jax, 'ffi') or not hasattr(jax.ffi, 'include_dir'):
    raise RuntimeError(f'jax {jax.__version__} has no jax.ffi (needs jax >= 0.4.38)')
  compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
  if not compiler:
    raise RuntimeError('no C++ compiler found (g++ or $CXX)')
  flags = list(flags)
  key_parts = [source.read_bytes(), jax.ffi.include_dir().encode(), jax.__version__.encode(),
               '\0'.join(flags).encode()]
  if any('native' in f for f in flags):
    key_parts.append(_cpu_id())
  key = hashlib.sha256(b'\0'.join(key_parts)).hexdigest()[:16]
  out_dir = out_dir or cache_dir()
  target = out_dir / f'{source.stem}-{key}.so'
  if target.exists():
    return target
  out_dir.mkdir(parents=True, exist_ok=True)
  # Built under a temporary name, then renamed: processes that build at the
  # same time (hosts sharing a home directory) never load a partial file.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=out_dir)
  os.close(fd)
  cmd = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-w',
         f'-I{jax.ffi.include_dir()}', str(source), *flags, '-o', tmp]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    os.unlink(tmp)
    raise RuntimeError(f'compiling {source.name} failed ({" ".join(cmd)}):\n'
                       f'{proc.stderr[-2000:]}')
  os.replace(tmp, target)
  return target


def load_and_register(what: str, build: Callable[[], pathlib.Path],
                      targets: Sequence[str]) -> str:
  """Builds (or finds) a library, loads it and registers its `targets` as
  XLA:CPU FFI handlers. Returns '' when they are registered, else why not
  (`what` names the kernels in that message)."""
  if sys.platform != 'linux':
    return f'{what} are built for Linux only (this is {sys.platform})'
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
    for name in targets:
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)),
                                  platform='cpu')
  except (RuntimeError, OSError) as e:
    return str(e)
  return ''
