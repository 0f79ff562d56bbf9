"""Two real processes whose mesh puts process 1's devices first (as make_mesh
may order a TPU pod's hosts): labels must come back next to their own rows.

Gathered from host arrays, labels arrive in process order while the outputs
arrive in the mesh's device order; on CPU the two orders only differ when the
mesh is built this way on purpose.
"""

import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKER = r'''
import sys
import numpy as np
import jax
from contrastive_jax import parallel
parallel.maybe_initialize_distributed('yes')
import jax.numpy as jnp
from jax.sharding import Mesh
from contrastive_jax import eval as eval_lib, loop

mesh = Mesh(np.array(jax.devices()[::-1]), ('data',))  # process 1's devices first
assert mesh.devices.flat[0].process_index == 1
p, local = jax.process_index(), 4

def batches(steps=3):
  for s in range(steps):
    ids = s * 8 + p * local + np.arange(local)
    image = np.broadcast_to(ids[:, None, None, None], (local, 2, 2, 1)).astype(np.uint8)
    yield {'image': image, 'label': ids % 7, 'mask': ids != 5, 'index': ids}

predict = lambda variables, x: {'f': x[:, 0, 0, 0].astype(jnp.float32)}
feats, labels = eval_lib.extract_features(predict, None, batches(), 'f', mesh)
assert len(labels) == 23
np.testing.assert_array_equal(labels, feats.astype(np.int64) % 7)

# predict_split reads the eval data itself: give it the same batches.
loop.pipeline.make_eval_iterator = lambda *a, **k: batches()
out = loop.predict_split(lambda x: jax.nn.one_hot(x[:, 0, 0, 0] % 7, 7), None, 'test', 16, mesh)
np.testing.assert_array_equal(out['pred'], out['label'])
np.testing.assert_array_equal(out['label'], out['id'] % 7)
print('aligned', p)
'''


def test_labels_stay_with_their_rows_when_the_mesh_reorders_processes():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  procs = []
  for i in range(2):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
               JAX_PLATFORMS='cpu', JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
               JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i), TF_CPP_MIN_LOG_LEVEL='2')
    procs.append(subprocess.Popen([sys.executable, '-c', _WORKER], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0 and f'aligned {i}' in out, out[-4000:]
