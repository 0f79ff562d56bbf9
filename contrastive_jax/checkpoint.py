"""Checkpoints: the one module that talks to orbax.

A checkpoint step directory holds two items:
  - 'state': a pytree of arrays (params, batch_stats, opt_state, step, rng key,
    ...), written by every process (orbax writes each process's shards; no
    process-0 special case) and restored onto whatever mesh the caller's
    abstract target describes, so a run saved on 8 devices resumes on 1 and
    vice versa.
  - 'extra': a small JSON dict (data position, config summary, ...), written
    once by the primary process. It must be the same on every process.

Layout: DIRECTORY/<step>/{state,extra}; only finalized (committed) steps are
ever listed, so a reader never sees a half-written checkpoint.

Integrity: once a step is committed, the writer records the SHA-256 of every
file in it (DIRECTORY/<step>/checksums.sha256.json), and `restore_latest_intact`
checks them before restoring: a newest step that is damaged (a flipped byte, a
truncated or missing file, an empty directory) or that orbax cannot read is
set aside, renamed into WORKDIR/checkpoints_damaged/ with a warning, never
deleted, and the previous intact step is used. Keep-K is done here, not by
orbax: after the checksums are written, so the newest verified step is never
the one deleted, and a step is deleted by renaming it out of the listing
first, so a kill in the middle never leaves a half-deleted step listed.

Write errors: a save that fails (a full disk, an I/O error) surfaces in the
main thread at the next wait (orbax writes in a background thread, and
tensorstore reports the OS error as a ValueError carrying its errno); it is
raised as one errors.CheckpointWriteError naming the directory, the space a
step needs and the step a rerun resumes from. The half-written step is
removed (it was never listed) and the committed steps are left as they are.

Usage (trainer):
  ckpt = Checkpointer(workdir + '/checkpoints', max_to_keep=config.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state, extra = ckpt.restore(target=to_abstract(state))
  ...
  ckpt.save(step, state, {'data': iterator.state()})   # async: returns quickly
  ...
  ckpt.save(final_step, state, extra, force=True); ckpt.close()

Usage (continuous evaluator, never writes):
  ckpt = Checkpointer(workdir + '/checkpoints', read_only=True)
  step = wait_for_new_checkpoint(ckpt.directory, last_step=None, timeout_s=3600)
  state, extra = ckpt.restore(step, target=abstract_state)
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import time
import weakref
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from contrastive_jax import errors, metrics_io

PyTree = Any

STATE_ITEM = 'state'
EXTRA_ITEM = 'extra'

__all__ = [
    'Checkpointer',
    'checkpoint_steps',
    'to_abstract',
    'wait_for_new_checkpoint',
]


def _resolve(directory: str | os.PathLike[str]) -> str:
  directory = os.fspath(directory)
  # orbax wants absolute local paths; leave remote URLs (gs://...) alone.
  if '://' in directory:
    return directory
  return os.path.abspath(os.path.expanduser(directory))


def _handler_registry() -> Any:
  """Registers the two items up front, so a fresh (e.g. read-only) manager can
  read metadata and restore without first having saved."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  registry.add(STATE_ITEM, ocp.args.StandardSave, ocp.handlers.StandardCheckpointHandler)
  registry.add(STATE_ITEM, ocp.args.StandardRestore, ocp.handlers.StandardCheckpointHandler)
  registry.add(EXTRA_ITEM, ocp.args.JsonSave, ocp.handlers.JsonCheckpointHandler)
  registry.add(EXTRA_ITEM, ocp.args.JsonRestore, ocp.handlers.JsonCheckpointHandler)
  return registry


def checkpoint_steps(directory: str | os.PathLike[str]) -> list[int]:
  """Sorted finalized steps in `directory` ([] if it does not exist). Read-only."""
  return sorted(ocp.utils.checkpoint_steps(_resolve(directory)))


def to_abstract(tree: PyTree, sharding: Any = None) -> PyTree:
  """Abstract restore target: a tree of jax.ShapeDtypeStruct with shardings.

  Args:
    tree: arrays, ShapeDtypeStructs (e.g. from jax.eval_shape) or scalars.
    sharding: one jax.sharding.Sharding for every array leaf (e.g. replicated
      over the mesh), a tree of shardings matching `tree`, or None to keep each
      leaf's own `.sharding`.
  """
  def one(x: Any, s: Any) -> Any:
    if not hasattr(x, 'shape') or not hasattr(x, 'dtype'):
      return x  # Python scalars restore as themselves.
    s = s if s is not None else getattr(x, 'sharding', None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

  if sharding is None or isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(lambda x: one(x, sharding), tree)
  return jax.tree.map(one, tree, sharding)


def _check_target(target: PyTree) -> None:
  """Refuses leaves without a sharding: orbax would then silently use the
  shardings recorded at save time, which break on a different device count."""
  def check(path: Any, leaf: Any) -> None:
    if hasattr(leaf, 'shape') and hasattr(leaf, 'dtype') and hasattr(leaf, 'sharding'):
      if leaf.sharding is None:
        raise ValueError(
            f'Restore target leaf {jax.tree_util.keystr(path)} has no sharding. '
            'Build the target with jax.ShapeDtypeStruct(shape, dtype, '
            'sharding=...) (see checkpoint.to_abstract(tree, sharding)), or '
            'pass target=None to restore host numpy arrays.')
  jax.tree_util.tree_map_with_path(check, target)


class Checkpointer:
  """Saves / restores (state pytree, extra JSON dict) per step via orbax.

  Args:
    directory: the checkpoint directory, usually WORKDIR/checkpoints.
    max_to_keep: keep only the newest K steps (None = keep all). Ignored when
      read_only.
    save_interval_steps: `save(step, ...)` without force writes only when
      step % save_interval_steps == 0 (1 = whenever called).
    async_save: write in a background thread; `save` returns once the arrays
      are copied to host memory (so the caller may donate / overwrite them).
    read_only: a reader (continuous evaluator): creates no directory, never
      writes or deletes anything; `save` raises.
  """

  def __init__(self, directory: str | os.PathLike[str], *,
               max_to_keep: int | None = None,
               save_interval_steps: int = 1,
               async_save: bool = True,
               read_only: bool = False):
    self.directory = _resolve(directory)
    self.read_only = read_only
    self.max_to_keep = max_to_keep
    self._pending: list[int] = []   # saved by this writer, checksums not yet written
    self._state_bytes = 0           # the last saved state's array bytes
    self._failed: errors.CheckpointWriteError | None = None   # a write failed (reported)
    if read_only:
      # Options orbax would otherwise reset (with a warning) for a reader; no
      # async machinery either: a reader has nothing to write.
      options = ocp.CheckpointManagerOptions(
          read_only=True, create=False, save_interval_steps=0,
          enable_async_checkpointing=False)
    else:
      if max_to_keep is not None and max_to_keep < 1:
        raise ValueError(f'max_to_keep={max_to_keep} must be >= 1 (or None = '
                         'keep all); see config.keep_checkpoints.')
      options = ocp.CheckpointManagerOptions(
          max_to_keep=None,   # keep-K is _apply_keep, after the checksums
          save_interval_steps=save_interval_steps,
          enable_async_checkpointing=async_save,
          create=True,
          # A run killed mid-save leaves <step>.orbax-checkpoint-tmp* behind;
          # they are never listed as steps, and the resumed writer removes them.
          cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, handler_registry=_handler_registry())
    _OPEN.add(self)

  # -- Queries ----------------------------------------------------------------

  def all_steps(self) -> list[int]:
    """Sorted steps available (includes a step whose async write is in flight)."""
    if self.read_only:
      self._manager.reload()  # a writer elsewhere may have added / removed steps
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` without force would write."""
    return (not self.read_only) and self._manager.should_save(step)

  # -- Save -------------------------------------------------------------------

  def save(self, step: int, state: PyTree, extra: Mapping[str, Any] | None = None,
           *, force: bool = False) -> bool:
    """Saves `state` (pytree of arrays) and `extra` (JSON dict) at `step`.

    Call on every process with the same step and extra. Without `force`, writes
    only if step is a multiple of save_interval_steps and newer than the latest
    checkpoint. `force=True` (end of training, SIGTERM) writes regardless. A
    step that already exists is never overwritten: returns False.

    Returns:
      True when a save was started (asynchronous: call wait() to block).
    """
    if self.read_only:
      raise RuntimeError(
          f'Checkpointer({self.directory!r}) is read_only; it cannot save.')
    step = int(step)
    if step in self._manager.all_steps():
      logging.info('Checkpoint step %d already exists in %s; not saving again.',
                   step, self.directory)
      return False
    try:
      extra = metrics_io.to_json_types(dict(extra or {}), strict=True)
    except TypeError as e:
      raise TypeError(f'Checkpoint `extra` must be JSON-serialisable: {e}') from e
    if not force and not self._manager.should_save(step):
      return False
    self._wait_manager()   # the previous save: checksum it, apply keep-K
    self._finish_pending()
    self._pending.append(step)
    self._state_bytes = sum(int(getattr(x, 'nbytes', 0)) for x in jax.tree.leaves(state))
    try:
      return bool(self._manager.save(
          step,
          args=ocp.args.Composite(**{
              STATE_ITEM: ocp.args.StandardSave(state),
              EXTRA_ITEM: ocp.args.JsonSave(extra),
          }),
          force=force))
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_failed(e) or e

  def wait(self) -> None:
    """Blocks until any in-flight asynchronous save is committed (and checksummed).

    Raises:
      errors.CheckpointWriteError: the save failed (no space left, ...).
    """
    self._wait_manager()
    self._finish_pending()

  def close(self) -> None:
    """Waits for in-flight saves and deletions, then releases orbax threads.

    After a write failure that was already raised, closes without raising it
    again (orbax re-raises a failed background save at every wait).
    """
    _OPEN.discard(self)
    try:
      if not self.read_only:
        self._wait_manager()
        self._finish_pending()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if self._failed is None:
          raise
        _close_after_failure(self._manager)

  # -- Write errors ----------------------------------------------------------------

  def _wait_manager(self) -> None:
    """orbax's wait for the in-flight save, its failure as CheckpointWriteError."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if self._failed is not None:
        return   # the same failed save, re-raised by orbax: reported already
      raise self._write_failed(e) or e

  def _write_failed(self, e: BaseException, checksums_of: int | None = None
                    ) -> errors.CheckpointWriteError | None:
    """The error to raise for a failed write (None: not an OS-level write
    error, re-raise `e` as it is). Removes the failed step's half-written
    directory; leaves every committed step alone. `checksums_of`: the
    committed step whose checksums could not be written."""
    code = _os_error_code(e)
    if code is None:
      return None
    if checksums_of is not None:
      step, where = checksums_of, f'the checksums of checkpoint step {checksums_of}'
    else:
      failed = [s for s in self._pending if s not in self._manager.all_steps()]
      step = failed[-1] if failed else (self._pending[-1] if self._pending else None)
      where = f'checkpoint step {step}' if step is not None else 'a checkpoint'
    self._pending = []
    if _is_primary() and step is not None and not _is_remote(self.directory):
      for tmp in glob.glob(os.path.join(self.directory, f'{step}.orbax-checkpoint-tmp*')):
        shutil.rmtree(tmp, ignore_errors=True)
    intact = sorted(s for s in self._manager.all_steps()
                    if s != step or checksums_of is not None)
    if intact:
      resume = f'it resumes from step {intact[-1]}, which is intact'
    else:
      resume = 'no checkpoint was written before it, so the run starts again at step 0'
    if code in (errno.ENOSPC, errno.EDQUOT):
      if intact:
        need, basis = (_dir_bytes(self.step_dir(intact[-1])),
                       f'the size of step {intact[-1]} on disk')
      else:
        need, basis = self._state_bytes, "the size of the state's arrays"
      free = _free_bytes(self.directory)
      message = (f'No space left on device while writing {where} to {self.directory}: a '
                 f'checkpoint step needs about {_human(need)} ({basis})'
                 + (f' and {_human(free)} are free there' if free is not None else '')
                 + '. Free some space (or use another --workdir) and rerun the same command: '
                 f'{resume}.')
    else:
      detail = ' '.join(str(e).split())
      message = (f'Writing {where} to {self.directory} failed: {os.strerror(code)} '
                 f'({detail[:300]}). Fix it and rerun the same command: {resume}.')
    self._failed = errors.CheckpointWriteError(code, message, self.directory)
    return self._failed

  # -- Integrity ----------------------------------------------------------------

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def _finish_pending(self) -> None:
    """Checksums the committed steps this writer saved, then keep-K."""
    pending, self._pending = self._pending, []
    committed = set(self._manager.all_steps())
    for step in pending:
      if step in committed and _is_primary() and not _is_remote(self.directory):
        try:
          write_checksums(self.step_dir(step))
        except OSError as e:
          # The step itself is committed (and restores without checksums).
          _remove(os.path.join(self.step_dir(step), CHECKSUM_FILE + '.tmp'))
          raise self._write_failed(e, checksums_of=step) or e
    self._apply_keep()

  def _apply_keep(self) -> None:
    """Deletes all but the newest max_to_keep steps, never the newest verified one."""
    if self.max_to_keep is None or not _is_primary() or _is_remote(self.directory):
      return
    steps = sorted(self._manager.all_steps())
    keep = set(steps[-self.max_to_keep:])
    verified = [s for s in steps if verify_checksums(self.step_dir(s))[0]]
    if verified:
      keep.add(verified[-1])
    for step in steps:
      if step not in keep:
        _delete_step_dir(self.step_dir(step))
    if len(keep) < len(steps):
      self._manager.reload()

  def set_aside(self, step: int, reason: str) -> str:
    """Moves a damaged step out of the listing (never deletes it); returns where."""
    damaged = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)
    os.makedirs(damaged, exist_ok=True)
    target = os.path.join(damaged, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    if _is_primary():
      os.rename(self.step_dir(step), target)
    logging.warning('Checkpoint step %d in %s is damaged (%s); set aside as %s, using the '
                    'previous step.', step, self.directory, reason, target)
    self._manager.reload()
    return target

  def _readable(self, step: int) -> bool:
    """Whether the step restores as host arrays in its own structure."""
    try:
      self.restore(step)
      return True
    except Exception:  # pylint: disable=broad-except
      return False

  def latest_intact_step(self) -> int | None:
    """The newest step whose checksums match (or that has none to check);
    damaged newer steps are set aside on the way."""
    for step in sorted(self.all_steps(), reverse=True):
      ok, reason = verify_checksums(self.step_dir(step))
      if ok is False:
        self.set_aside(step, reason)
        continue
      return step
    return None

  def restore_latest_intact(self, target: PyTree, restore_fn=None
                            ) -> tuple[PyTree, dict[str, Any], int]:
    """(state, extra, step) of the newest step that verifies and restores.

    A newest step whose checksums do not match, or which `restore_fn(step)`
    (default: self.restore(step, target)) cannot read, is set aside and the
    previous one tried. A step without checksums (written before they were
    recorded, or killed between its commit and its checksums) is trusted if
    it restores. Raises FileNotFoundError listing what was found when no step
    is intact.
    """
    restore_fn = restore_fn or (lambda s: self.restore(s, target))
    found = []
    for step in sorted(self.all_steps(), reverse=True):
      ok, reason = verify_checksums(self.step_dir(step))
      if ok is False:
        found.append(f'{step}: {reason}')
        self.set_aside(step, reason)
        continue
      try:
        state, extra = restore_fn(step)
      except Exception as e:  # pylint: disable=broad-except
        if ok or self._readable(step):
          raise   # the files are as written: the misfit is the config's (see restore)
        reason = f'orbax could not read it ({type(e).__name__}: {str(e)[:200]})'
        found.append(f'{step}: {reason}')
        self.set_aside(step, reason)
        continue
      if not _all_finite(state):
        reason = 'it holds NaN or infinite values'
        found.append(f'{step}: {reason}')
        self.set_aside(step, reason)
        continue
      return state, extra, step
    raise FileNotFoundError(f'No intact checkpoint in {self.directory}; found: '
                            f'{"; ".join(found) or "none"}. The damaged steps are in '
                            f'{os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)}.')

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  # -- Restore ----------------------------------------------------------------

  def restore(self, step: int | None = None, target: PyTree = None
              ) -> tuple[PyTree, dict[str, Any]]:
    """Restores (state, extra) from `step` (None = latest).

    Args:
      step: the step to restore; None = the latest.
      target: abstract state: a tree of jax.ShapeDtypeStruct with `.sharding`
        (see `to_abstract`). The result has the target's tree structure
        (optax NamedTuples, flax structs) and is placed with the target's
        shardings, whatever mesh the checkpoint was written from. None: restore
        host numpy arrays in the saved (dict / list) structure, e.g. to export
        params without building a model (Python scalars come back as 0-d
        arrays, typed PRNG keys as their uint32 key data).

    Raises:
      FileNotFoundError: no checkpoint in the directory, or no such step.
      ValueError: the saved tree does not fit `target` (shapes, structure).
    """
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(
          f'No checkpoint found in {self.directory}. Train first (or point the '
          'workdir at a run that has WORKDIR/checkpoints/<step>/), or start '
          'from scratch without restoring.')
    if step is None:
      step = steps[-1]
    step = int(step)
    if step not in steps:
      raise FileNotFoundError(
          f'Checkpoint step {step} not found in {self.directory}; available '
          f'steps: {steps}.')
    if target is None:
      target = self._host_target(step)
    else:
      _check_target(target)
    try:
      restored = self._manager.restore(
          step,
          args=ocp.args.Composite(**{
              STATE_ITEM: ocp.args.StandardRestore(target),
              EXTRA_ITEM: ocp.args.JsonRestore(),
          }))
    except (ValueError, TypeError, KeyError) as e:
      raise ValueError(
          f'The checkpoint at step {step} in {self.directory} does not fit the state '
          'this run builds, or could not be read. If the config differs (another '
          'model, optimizer, ...), resume with the one the run started with (its '
          'config.json) or use a new --workdir; otherwise see what orbax said: '
          f'{type(e).__name__}: {e}') from e
    extra = restored[EXTRA_ITEM]
    return restored[STATE_ITEM], dict(extra) if extra is not None else {}

  def _host_target(self, step: int) -> PyTree:
    """A target that makes orbax return numpy arrays: orbax restores a leaf as
    the type of a *concrete* target leaf, and a numpy leaf has no sharding. The
    zero-strided broadcast costs no memory."""
    metadata = self._manager.item_metadata(step)[STATE_ITEM]
    tree = metadata.tree if hasattr(metadata, 'tree') else metadata

    def leaf(m: Any) -> Any:
      if hasattr(m, 'shape') and hasattr(m, 'dtype'):
        try:
          return np.broadcast_to(np.zeros((), np.dtype(m.dtype)), m.shape)
        except TypeError:  # e.g. typed PRNG keys: keep orbax's default
          return m
      return m
    return jax.tree.map(leaf, tree)

  def item_metadata(self, step: int | None = None) -> PyTree:
    """Shapes / dtypes / saved shardings of the state at `step` (no array I/O)."""
    step = self.latest_step() if step is None else int(step)
    if step is None:
      raise FileNotFoundError(f'No checkpoint found in {self.directory}.')
    metadata = self._manager.item_metadata(step)[STATE_ITEM]
    return metadata.tree if hasattr(metadata, 'tree') else metadata


CHECKSUM_FILE = 'checksums.sha256.json'
DAMAGED_DIR = 'checkpoints_damaged'


def _is_primary() -> bool:
  return jax.process_index() == 0


def _is_remote(directory: str) -> bool:
  return '://' in directory


def _digests(step_dir: str) -> dict[str, str]:
  out = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel.startswith(CHECKSUM_FILE):
        continue
      digest = hashlib.sha256()
      with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
          digest.update(chunk)
      out[rel] = digest.hexdigest()
  return out


def write_checksums(step_dir: str) -> None:
  """Records the SHA-256 of every file of a committed step (atomically)."""
  digests = _digests(step_dir)
  tmp = os.path.join(step_dir, CHECKSUM_FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(digests, f, indent=0, sort_keys=True)
  os.replace(tmp, os.path.join(step_dir, CHECKSUM_FILE))


def verify_checksums(step_dir: str) -> tuple[bool | None, str]:
  """(True, '') when every recorded file is there with its digest; (False,
  what differs); (None, why) when there is nothing to check against."""
  if _is_remote(step_dir):
    return None, 'remote directory'
  path = os.path.join(step_dir, CHECKSUM_FILE)
  if not os.path.isdir(step_dir) or not os.listdir(step_dir):
    return False, 'empty or missing directory'
  if not os.path.exists(path):
    return None, 'no checksums recorded'
  try:
    with open(path) as f:
      expected = json.load(f)
  except (OSError, ValueError) as e:
    return False, f'unreadable {CHECKSUM_FILE} ({e})'
  actual = _digests(step_dir)
  for rel, digest in sorted(expected.items()):
    if rel not in actual:
      return False, f'{rel} is missing'
    if actual[rel] != digest:
      return False, f'{rel} differs from what was written'
  return True, ''


_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def _os_error_code(e: BaseException) -> int | None:
  """The errno of a failed write: an OSError's own, or the one tensorstore
  puts in its message ("... No space left on device [os_error_code='28']"),
  looked for along the exception's causes."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno:
      return e.errno
    text = str(e)
    match = _OS_ERROR_CODE.search(text)
    if match:
      return int(match.group(1))
    if 'No space left on device' in text:
      return errno.ENOSPC
    e = e.__cause__ or e.__context__
  return None


def is_write_error(e: BaseException) -> bool:
  """Whether `e` is a failed write at the OS level (see _os_error_code)."""
  return _os_error_code(e) is not None


def _dir_bytes(path: str) -> int:
  """Bytes a directory takes on disk (allocated blocks: a filesystem stores
  each small file in whole blocks)."""
  total = 0
  for root, _, names in os.walk(path):
    for name in names:
      try:
        st = os.stat(os.path.join(root, name))
      except OSError:
        continue
      total += max(st.st_size, getattr(st, 'st_blocks', 0) * 512)
  return total


def _free_bytes(path: str) -> int | None:
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def _human(n: int) -> str:
  for unit in ('bytes', 'KiB', 'MiB', 'GiB'):
    if n < 1024 or unit == 'GiB':
      return f'{n:.0f} {unit}' if unit == 'bytes' else f'{n:.1f} {unit}'
    n /= 1024
  return f'{n:.1f} TiB'


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


def _close_after_failure(manager: Any) -> None:
  """The rest of CheckpointManager.close() after its wait re-raised a failed
  save: the asynchronous writer, metadata stores and deleter still hold
  threads, which must stop before the interpreter does."""
  for name in ('_checkpointer', '_non_blocking_metadata_store', '_blocking_metadata_store',
               '_checkpoint_deleter'):
    part = getattr(manager, name, None)
    try:
      if part is not None:
        part.close()
    except Exception:  # pylint: disable=broad-except
      pass


def _all_finite(tree: PyTree) -> bool:
  floats = [x for x in jax.tree.leaves(tree)
            if hasattr(x, 'dtype') and jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]
  return all(bool(jax.numpy.isfinite(x).all()) for x in floats)


def _delete_step_dir(step_dir: str) -> None:
  """Renames out of the listing first (atomic), then removes: a kill in the
  middle leaves a tmp directory that orbax cleans up, never a listed half-step."""
  doomed = f'{step_dir}.orbax-checkpoint-tmp-deleting'
  os.rename(step_dir, doomed)
  shutil.rmtree(doomed, ignore_errors=True)


# Checkpointers not yet closed: a binary that stops on an error closes them
# (close_all) so orbax's asynchronous machinery shuts down before the
# interpreter does, instead of failing at exit with a pile of tracebacks.
_OPEN: 'weakref.WeakSet[Checkpointer]' = weakref.WeakSet()


def close_all() -> None:
  """Closes every open Checkpointer (waiting for its in-flight writes)."""
  for ckpt in list(_OPEN):
    try:
      ckpt.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Closing the checkpointer of %s failed: %s', ckpt.directory, e)


def wait_for_new_checkpoint(directory: str | os.PathLike[str],
                            last_step: int | None,
                            timeout_s: float | None = None,
                            poll_s: float = 10.0) -> int | None:
  """Polls `directory` until a finalized step newer than `last_step` appears.

  Read-only (unlike orbax's own helper, which snapshots into the directory).
  Returns the newest such step (an evaluator that fell behind skips to the
  newest), or None after `timeout_s` seconds (None = wait forever). With
  several processes, process 0 polls and broadcasts its answer so all agree.
  """
  directory = _resolve(directory)
  deadline = None if timeout_s is None else time.monotonic() + timeout_s
  found = -1
  if jax.process_index() == 0:
    while True:
      steps = [s for s in checkpoint_steps(directory)
               if last_step is None or s > last_step]
      if steps:
        found = max(steps)
        break
      if deadline is not None and time.monotonic() >= deadline:
        break
      sleep = poll_s if deadline is None else min(poll_s, max(0.0, deadline - time.monotonic()))
      time.sleep(sleep)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    found = int(multihost_utils.broadcast_one_to_all(np.int64(found)))
  return None if found < 0 else found
