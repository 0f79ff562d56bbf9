"""metrics_io: metrics.jsonl lines, TensorBoard events (parsed), config.json, Progress."""

import glob
import json
import os
import struct

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from contrastive_jax import metrics_io


def _event_records(workdir):
  """Every Event in the TensorBoard event files under workdir/tensorboard."""
  files = glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*'))
  assert files, 'no TensorBoard event file'
  for path in files:
    data = open(path, 'rb').read()
    pos = 0
    while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      payload = data[pos + 12:pos + 12 + length]
      pos += 12 + length + 4
      yield event_pb2.Event.FromString(payload)


def _events(workdir):
  """(step, tag, kind) of every summary value in the TensorBoard event files."""
  return [(event.step, value.tag, value.WhichOneof('value'), value)
          for event in _event_records(workdir) for value in event.summary.value]


def test_write_scalars_jsonl_and_tensorboard(tmp_path):
  workdir = str(tmp_path / 'run')
  writer = metrics_io.MetricsWriter(workdir, enabled=True)
  writer.write_scalars(10, {'loss': jnp.float32(4.5), 'acc': np.float64(0.25), 'n': 3})
  # Flushed at once: readable before close (a crashed run keeps its log).
  assert metrics_io.read_metrics(workdir) == [{'step': 10, 'loss': 4.5, 'acc': 0.25, 'n': 3}]
  writer.write_scalars(np.int64(20), {'loss': 2.0, 'diverged': float('nan')})
  writer.close()

  lines = open(os.path.join(workdir, 'metrics.jsonl')).read().splitlines()
  assert len(lines) == 2
  assert json.loads(lines[0]) == {'step': 10, 'loss': 4.5, 'acc': 0.25, 'n': 3}
  records = metrics_io.read_metrics(workdir)
  assert records[1]['step'] == 20 and records[1]['loss'] == 2.0
  assert np.isnan(records[1]['diverged'])

  scalars = {(s, tag): v.simple_value for s, tag, kind, v in _events(workdir)
             if kind == 'simple_value'}
  assert scalars[(10, 'loss')] == pytest.approx(4.5)
  assert scalars[(10, 'acc')] == pytest.approx(0.25)
  assert scalars[(20, 'loss')] == pytest.approx(2.0)

  with pytest.raises(ValueError, match="'v' must be a scalar"):
    metrics_io.MetricsWriter(workdir, enabled=True).write_scalars(1, {'v': np.ones(3)})


def test_write_images(tmp_path):
  workdir = str(tmp_path)
  with metrics_io.MetricsWriter(workdir, enabled=True) as writer:
    writer.write_images(0, 'views/gray', np.random.rand(4, 8, 8, 1).astype(np.float32))
    writer.write_images(5, 'views/rgb', jnp.full((2, 6, 6, 3), 1.5))  # clipped
    with pytest.raises(ValueError, match='NHWC|N,H,W,C'):
      writer.write_images(0, 'bad', np.zeros((2, 6, 6, 2)))
  images = {(s, tag): v.image for s, tag, kind, v in _events(workdir) if kind == 'image'}
  assert set(images) == {(0, 'views/gray'), (5, 'views/rgb')}
  assert images[(5, 'views/rgb')].width > 6  # a grid of the 2 images
  assert images[(5, 'views/rgb')].encoded_image_string[:4] == b'\x89PNG'


def test_write_config_and_json(tmp_path):
  workdir = str(tmp_path)
  config = ml_collections.ConfigDict(dict(
      seed=0, model=dict(stage_sizes=(1, 1), depth=0), lr=np.float32(0.5), name='x'))
  writer = metrics_io.MetricsWriter(workdir, enabled=True)
  writer.write_config(config)
  writer.write_json('eval/results.json', {'top1': np.float32(0.75), 'steps': (1, 2)})
  writer.close()
  loaded = json.load(open(os.path.join(workdir, 'config.json')))
  assert loaded == {'seed': 0, 'model': {'stage_sizes': [1, 1], 'depth': 0},
                    'lr': 0.5, 'name': 'x'}
  assert ml_collections.ConfigDict(loaded).model.stage_sizes == [1, 1]
  assert json.load(open(os.path.join(workdir, 'eval', 'results.json'))) == {
      'top1': 0.75, 'steps': [1, 2]}
  assert any(kind == 'tensor' or tag.startswith('config') for _, tag, kind, _ in _events(workdir))


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  writer = metrics_io.MetricsWriter(str(workdir), enabled=False)
  writer.write_scalars(1, {'loss': 1.0})
  writer.write_images(1, 'x', np.zeros((1, 4, 4, 3)))
  writer.write_config(ml_collections.ConfigDict({'a': 1}))
  writer.write_json('a.json', {})
  writer.close()
  assert not workdir.exists()
  assert metrics_io.read_metrics(str(workdir)) == []


def test_default_enabled_is_process_zero(tmp_path):
  assert metrics_io.MetricsWriter(str(tmp_path), tensorboard_subdir='').enabled
  assert metrics_io.Progress(10, 8).enabled


def test_truncate_on_resume_and_partial_last_line(tmp_path):
  workdir = str(tmp_path)
  writer = metrics_io.MetricsWriter(workdir, enabled=True, tensorboard_subdir='')
  for step in (10, 20, 30):
    writer.write_scalars(step, {'loss': float(step)})
  writer.truncate(after_step=20)
  writer.write_scalars(30, {'loss': 0.5})
  assert [(r['step'], r['loss']) for r in metrics_io.read_metrics(workdir)] == [
      (10, 10.0), (20, 20.0), (30, 0.5)]
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 40, "lo')  # killed mid-write
  assert len(metrics_io.read_metrics(workdir)) == 3


def test_a_workdir_under_tilde_is_the_home_folder(tmp_path, monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  monkeypatch.chdir(tmp_path)
  with metrics_io.MetricsWriter('~/run', enabled=True) as writer:
    writer.write_config({'a': 1})
    writer.write_scalars(1, {'loss': 2.0})
  assert sorted(os.listdir(tmp_path / 'home' / 'run')) == [
      'config.json', 'metrics.jsonl', 'tensorboard']
  assert not os.path.exists(tmp_path / '~')  # where os.makedirs('~/run') would write
  assert metrics_io.read_metrics('~/run') == [{'step': 1, 'loss': 2.0}]


def test_truncate_purges_the_interrupted_runs_tensorboard_events(tmp_path):
  workdir = str(tmp_path)
  writer = metrics_io.MetricsWriter(workdir, enabled=True)
  for step in (10, 20, 30):
    writer.write_scalars(step, {'loss': float(step)})
  writer.truncate(after_step=20)
  writer.write_scalars(30, {'loss': 0.5})
  writer.close()
  starts = [e.step for e in _event_records(workdir)
            if e.HasField('session_log') and e.session_log.status == e.session_log.START]
  losses = [(step, v.simple_value) for step, _, _, v in _events(workdir)]
  # TensorBoard drops earlier events with step >= 21 when it reads this marker;
  # the events before it stay (the reopened writer has a file of its own).
  assert starts == [21]
  assert sorted(losses) == [(10, 10.0), (20, 20.0), (30, 0.5), (30, 30.0)]


def test_progress_line(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(metrics_io.time, 'monotonic', lambda: clock[0])
  lines = []
  progress = metrics_io.Progress(1000, 256, enabled=True, log_every=10, print_fn=lines.append)
  clock[0] += 20.0  # 120 steps x 256 images in 20 s = 1536 img/s
  line = progress.update(120, {'loss': jnp.float32(4.1234), 'contrast_acc': 0.52})
  assert line == 'step 120/1000 | loss 4.123 | contrast_acc 0.52 | 1536 img/s | ETA 2m27s'
  assert lines == [line]
  assert progress.update(125, {'loss': 1.0}) is None  # not a log step
  clock[0] += 1.0
  last = progress.update(1000, {})  # the last step always prints
  assert last.startswith('step 1000/1000 | ') and last.endswith('ETA 0s')
  assert len(lines) == 2

  quiet = metrics_io.Progress(10, 8, enabled=False, print_fn=lines.append)
  assert quiet.update(10, {'loss': 1.0}) is None and len(lines) == 2


def test_format_duration():
  assert metrics_io.format_duration(45) == '45s'
  assert metrics_io.format_duration(192) == '3m12s'
  assert metrics_io.format_duration(3720) == '1h02m'
  assert metrics_io.format_duration(float('nan')) == '?'


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
  """gs://bucket/... served from tmp_path/bucket through etils.epath's mock.

  A writer that bypassed epath (plain open / os) would instead create a folder
  named 'gs:' in the working directory, which the tests check is absent.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  # With TensorFlow installed, epath sends gs:// to tf.io.gfile and skips the
  # mock's backend table; without it, the mock below serves every gs:// call.
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)
  root, cwd = tmp_path / 'bucket', tmp_path / 'cwd'
  root.mkdir()
  cwd.mkdir()
  monkeypatch.chdir(cwd)

  def local(arg):
    if isinstance(arg, (str, os.PathLike)) and os.fspath(arg).startswith('gs://bucket/'):
      return str(root / os.fspath(arg)[len('gs://bucket/'):])
    return arg  # a mode, or a path the backend already mapped

  def on_local(fn, path, *args, **kwargs):
    return fn(local(path), *(local(a) for a in args), **kwargs)

  names = ('open', 'exists', 'isdir', 'listdir', 'makedirs', 'mkdir', 'remove', 'rename',
           'replace', 'stat', 'glob')
  with epath.testing.mock_epath(**{n: on_local for n in names}):
    yield root
  assert not os.path.exists(cwd / 'gs:'), 'something bypassed epath'


def test_a_bucket_workdir_gets_metrics_config_and_results(fake_bucket):
  with pytest.warns(UserWarning, match='No TensorBoard events'):
    writer = metrics_io.MetricsWriter('gs://bucket/run')
  writer.write_config({'lr': 0.1})
  for step in (1, 2, 3):
    writer.write_scalars(step, {'loss': 1.0 / step})
  writer.truncate(2)  # a resume from step 2
  writer.write_scalars(3, {'loss': 0.25})
  writer.write_json('results.json', {'top1': 0.5})
  writer.close()
  run = fake_bucket / 'run'
  assert json.loads((run / 'config.json').read_text()) == {'lr': 0.1}
  assert [r['loss'] for r in metrics_io.read_metrics('gs://bucket/run')] == [1.0, 0.5, 0.25]
  assert json.loads((run / 'results.json').read_text()) == {'top1': 0.5}
  assert sorted(os.listdir(run)) == ['config.json', 'metrics.jsonl', 'results.json']

  from contrastive_jax import export, plots  # pylint: disable=g-import-not-at-top
  assert export.read_config('gs://bucket/run').lr == 0.1
  plots.scatter_png(np.zeros((4, 2)), np.arange(4), 'gs://bucket/run/eval/emb.png')
  assert (run / 'eval' / 'emb.png').read_bytes()[:4] == b'\x89PNG'
