r"""Interop: workdirs to and from PyTorch, the official SimCLR TF checkpoints, NumPy.

One binary, `python -m contrastive_jax.export` (cli.py):

  --to=torch      torch_io.export_torch: a torchvision-layout state_dict + the
                  PyTorch module beside it (torch_resnet.py), projection head included
  --to=npz        npz.export_npz: parameters + BN statistics + config, NumPy only
  --to=jax_export npz.export_jax: a serialized, batch-polymorphic jax.export forward
  --from=torch    torch_io.import_torch: torchvision / PyTorch ResNet weights, or a
                  --to=torch file, into a new workdir
  --from=tf_simclr  tf_simclr.import_tf_simclr: the official SimCLR v1/v2 TF1
                  checkpoints into a new workdir

An imported workdir is a pretraining workdir (config.json, checkpoints/0,
import.json): `export.load_encoder(WORKDIR)`, `eval --config.init_from=WORKDIR`
and `finetune --config.init_from=WORKDIR` take it as they take a run's.
Every conversion checks names and shapes: every variable of the network gets
exactly one value, every variable of the source is used once or skipped by a
stated rule, and the first misfit stops it, naming the variable, with nothing
written. tests/test_interop.py proves each direction numerically (same h).

The official checkpoints (needs gsutil, from the Google Cloud SDK):

  gsutil -m cp -r gs://simclr-checkpoints/simclrv2/pretrained/r50_1x_sk0 .
  python -m contrastive_jax.export --from=tf_simclr \
      --src=r50_1x_sk0/model.ckpt-250228 --workdir=/tmp/simclr_v2_r50_1x_sk0
  # other v2 models: r50|r101|r152 _ 1x|2x _ sk0|sk1, r152_3x_sk1 (same step 250228);
  # v1 (no projection head): gsutil cp gs://simclr-gcs/checkpoints/ResNet50_1x.zip .
  #   && unzip ResNet50_1x.zip, then --src=ResNet50_1x (also 2x, 4x)

then, e.g., `python -m contrastive_jax.eval --config=configs/eval.py
--workdir=/tmp/eval_v2 --config.init_from=/tmp/simclr_v2_r50_1x_sk0
--config.data.data_dir=...`. The images go in as [0, 1] floats, as SimCLR's
own code feeds them (no mean/std normalisation).
"""
