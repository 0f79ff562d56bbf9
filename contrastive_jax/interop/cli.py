r"""The interop binary: `python -m contrastive_jax.export` (or `-m contrastive_jax.interop`).

  # export a workdir (latest checkpoint; --step=N for another)
  python -m contrastive_jax.export --workdir=RUN --to=torch --out=encoder.pt
  python -m contrastive_jax.export --workdir=RUN --to=npz --out=encoder.npz
  python -m contrastive_jax.export --workdir=RUN --to=jax_export --out=encoder.jaxexport

  # import into a new workdir (finetune --config.init_from / eval / load_encoder take it)
  python -m contrastive_jax.export --from=torch --src=resnet50.pth --workdir=NEW \
      [--input_norm=imagenet] [--prefix=backbone.] [--config=configs/...py]
  python -m contrastive_jax.export --from=tf_simclr --src=r50_1x_sk0/model.ckpt-250228 \
      --workdir=NEW [--tf_network=ema] [--supervised_head=skip] [--config=...]

--config (a pretraining config file, overrides as --config.key=value) gives an
import everything but the network: the data the workdir's eval / finetune
read, the projection head when the checkpoint has none. Without it the data
is ImageNet (tfds imagenet2012, 224 px) for the ImageNet stem and CIFAR-10
for the CIFAR stem. A mistake (a path, a name or shape that does not fit)
ends in one line on stderr and exit status 2; nothing is left half-written.
"""

from __future__ import annotations

import sys
from typing import Any

EXPORTS = ('torch', 'npz', 'jax_export')
IMPORTS = ('torch', 'tf_simclr')


def run(flags_values: Any) -> str:
  """Does what the flags ask; returns a one-line summary."""
  f = flags_values
  direction = f['from'].value
  if direction and f.to:
    raise ValueError('Give either --to (export a workdir) or --from (import into a new '
                     'workdir), not both.')
  if not direction and not f.to:
    raise ValueError(f'Give --to={"|".join(EXPORTS)} with --workdir and --out, or '
                     f'--from={"|".join(IMPORTS)} with --src and --workdir.')
  if not f.workdir:
    raise ValueError('--workdir is required.')
  step = None if f.step < 0 else f.step
  if f.to:
    if not f.out:
      raise ValueError(f'--to={f.to} needs --out=PATH.')
    if f.to == 'torch':
      from contrastive_jax.interop import torch_io  # pylint: disable=g-import-not-at-top
      paths = torch_io.export_torch(f.workdir, f.out, step, network=f.network)
      return (f"Wrote {paths['weights']} and {paths['module']}; in PyTorch: "
              f"encoder, head, meta = {_module_name(paths['module'])}.load('{paths['weights']}')")
    from contrastive_jax.interop import npz  # pylint: disable=g-import-not-at-top
    if f.to == 'npz':
      return f'Wrote {npz.export_npz(f.workdir, f.out, step, network=f.network)}.'
    return f'Wrote {npz.export_jax(f.workdir, f.out, step, network=f.network)}.'
  if not f.src:
    raise ValueError(f'--from={direction} needs --src=PATH.')
  config = f.config
  if direction == 'torch':
    from contrastive_jax.interop import torch_io  # pylint: disable=g-import-not-at-top
    workdir = torch_io.import_torch(f.src, f.workdir, config, prefix=f.prefix,
                                    input_norm=f.input_norm)
  else:
    from contrastive_jax.interop import tf_simclr  # pylint: disable=g-import-not-at-top
    workdir = tf_simclr.import_tf_simclr(f.src, f.workdir, config, network=f.tf_network,
                                         supervised_head=f.supervised_head)
  return (f'Imported {f.src} into {workdir} (step 0; {workdir}/import.json lists what was '
          'used, skipped and initialised).')


def _module_name(path: str) -> str:
  import os  # pylint: disable=g-import-not-at-top
  return os.path.splitext(os.path.basename(path))[0]


def main() -> None:
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'Export: the run to read. Import: the new workdir.')
  flags.DEFINE_enum('to', None, EXPORTS, 'Export format.')
  flags.DEFINE_string('out', None, 'Export: the output file.')
  flags.DEFINE_enum('from', None, IMPORTS, 'Import format.')
  flags.DEFINE_string('src', None, 'Import: the checkpoint / state_dict file (or folder).')
  config_flags.DEFINE_config_file('config', None, 'Import: a pretraining config file for '
                                  'everything but the network.', lock_config=False)
  flags.DEFINE_integer('step', -1, 'Export: the checkpoint step (-1 = latest).')
  flags.DEFINE_enum('network', 'online', ('online', 'momentum'),
                    "Export: the trained network or a method's momentum copy.")
  flags.DEFINE_enum('tf_network', 'online', ('online', 'ema'),
                    'tf_simclr import: the trained network or v2\'s ema_model/ copy.')
  flags.DEFINE_enum('supervised_head', 'probe', ('probe', 'skip'),
                    'tf_simclr import: head_supervised as the online probe, or left out '
                    '(fine-tuned checkpoints).')
  flags.DEFINE_string('prefix', None, 'torch import: the module prefix of the ResNet in the '
                      "state_dict (e.g. 'backbone.'); found by itself when there is one.")
  flags.DEFINE_enum('input_norm', 'none', ('none', 'imagenet'),
                    "torch import: fold torchvision's ImageNet mean/std into the stem.")

  def _main(argv):
    del argv
    if not flags.FLAGS['verbosity'].present:
      absl_logging.set_verbosity(absl_logging.WARNING)   # orbax's info lines
    try:
      print(run(flags.FLAGS))
    except SystemExit:
      raise
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
      if flags.FLAGS.verbosity > 0:
        raise
      sys.stderr.write(f'error: {" ".join(str(e).split())}\n(exit 2; --verbosity=1 shows the '
                       'traceback)\n')
      sys.exit(2)

  app.run(_main)
