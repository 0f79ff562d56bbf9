r"""Host input throughput: JPEG decode + resize per training image, per mode.

  python benchmarks/host_input.py                 # 512 photos, batch 128
  python benchmarks/host_input.py --quick         # CI: a few small photos

What a streamed ImageNet run asks of each host's CPU before the device sees a
batch (contrastive_jax/data/tfds_source.py), measured with tf.data on
synthetic JPEGs of ImageNet's common sizes (500 x 375, 375 x 500, 500 x 333,
500 x 500, ... : smooth gradients plus noise, quality 90; real photos decode
at a similar rate per pixel). Modes:
  center_square S   decode only the central square (decode_and_crop_jpeg),
                    resize to S x S: evaluation, and training with
                    data.random_crop_from='center_square'.
  letterbox S       decode the whole photo, longer side to S, pad: training
                    with data.random_crop_from='image' (the default).
Images/s is the median over bursts of --batches batches, after one warm-up
burst, with tf.data's AUTOTUNE parallelism on every core of this machine.
Divide a device step's images/s by it to get the host cores one device needs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from contrastive_jax.data import tfds_source  # pylint: disable=wrong-import-position

# (height, width) of ImageNet's most common photo sizes, weighted roughly as found there.
SIZES = ((375, 500), (333, 500), (500, 375), (500, 333), (500, 500), (375, 500),
         (400, 500), (281, 500), (500, 400), (334, 500))


def synthetic_jpegs(n: int, scale: float, seed: int = 0) -> list[bytes]:
  """n JPEG-encoded photos: smooth colour gradients plus mild noise."""
  tf, _ = tfds_source._import_tf()  # pylint: disable=protected-access
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    h, w = (max(8, int(round(s * scale))) for s in SIZES[i % len(SIZES)])
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing='ij')
    phase = rng.uniform(0, 2 * np.pi, 3)
    image = np.stack([np.sin(3 * xx + 2 * yy + p) for p in phase], -1) * 90 + 128
    image += rng.normal(0, 12, image.shape)
    out.append(tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90).numpy())
  return out


def measure(encoded: list[bytes], mode: str, side: int, *, batch: int, batches: int,
            bursts: int) -> dict[str, Any]:
  tf, _ = tfds_source._import_tf()  # pylint: disable=protected-access
  if mode == 'letterbox':
    fn = tfds_source._letterbox_fn(3, side)  # pylint: disable=protected-access
  else:
    fn = tfds_source._decode_fn(3, side)  # pylint: disable=protected-access
  ds = (tf.data.Dataset.from_tensor_slices(encoded).repeat()
        .map(fn, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(2))
  it = iter(ds)
  rates = []
  for burst in range(bursts + 1):
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    if burst:  # the first burst warms up tf.data's threads and caches
      rates.append(batch * batches / (time.perf_counter() - t0))
  return dict(mode=mode, side=side, images_per_s=statistics.median(rates),
              min_images_per_s=min(rates), max_images_per_s=max(rates))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--photos', type=int, default=512, help='distinct synthetic JPEGs')
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--batches', type=int, default=8, help='batches per timed burst')
  p.add_argument('--bursts', type=int, default=5)
  p.add_argument('--modes', default='center_square:256,center_square:320,letterbox:256,'
                 'letterbox:320', help='comma-separated MODE:SIDE')
  p.add_argument('--out', default='', help='append the result as one JSON line')
  p.add_argument('--quick', action='store_true', help='tiny sizes (CI)')
  args = p.parse_args(argv)
  if args.quick:
    args.photos, args.batch, args.batches, args.bursts = 8, 4, 2, 2
    args.modes = 'center_square:32,letterbox:32'
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  tf, _ = tfds_source._import_tf()  # pylint: disable=protected-access
  scale = 0.1 if args.quick else 1.0
  encoded = synthetic_jpegs(args.photos, scale)
  rows = []
  for spec in args.modes.split(','):
    mode, side = spec.split(':')
    if mode not in ('center_square', 'letterbox'):
      raise ValueError(f"--modes: {mode!r}; choose 'center_square' or 'letterbox'.")
    rows.append(measure(encoded, mode, int(side), batch=args.batch, batches=args.batches,
                        bursts=args.bursts))
  env = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
             host=platform.node(), cpu_count=os.cpu_count(),
             loadavg=os.getloadavg()[0], python=platform.python_version(),
             tensorflow=tf.__version__)
  print(f'Host input, {args.photos} synthetic JPEGs (ImageNet sizes x {scale}), batch '
        f'{args.batch}, {os.cpu_count()} cores, TF {tf.__version__}, {env["date"]}\n')
  print('| mode | side | images/s (median) | min-max |')
  print('|---|---|---|---|')
  for r in rows:
    print(f"| {r['mode']} | {r['side']} | {r['images_per_s']:.0f} | "
          f"{r['min_images_per_s']:.0f}-{r['max_images_per_s']:.0f} |")
  if args.out:
    with open(args.out, 'a') as f:
      f.write(json.dumps(dict(kind='host_input', env=env, args=vars(args), rows=rows)) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
