"""SimCLR on the full Fashion-MNIST (offline IDX files): the CPU quality benchmark.

  python -m contrastive_jax.pretrain --config=configs/fashion_mnist.py --workdir=/tmp/cj_fmnist
  python -m contrastive_jax.eval --config=configs/eval.py --workdir=/tmp/cj_fmnist \
      --config.init_from=/tmp/cj_fmnist
  python benchmarks/quality.py --budget-minutes 20   # fixed wall-clock budget + baselines

Data: the four IDX files of Debian's `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist), 60k train (5k carved for validation) /
10k test, 28x28 grayscale. Recipe choices for 28 px grayscale on a 2-core
CPU, where every step is expensive, are explained next to each value; runs
that failed are recorded in benchmarks/NOTES.md ("Fashion-MNIST recipe").

Measured on an idle 2-core CPU VM (matmul ~200 GFLOP/s), 2026-12-04, commit
f118352 (`python benchmarks/quality.py --budgets 5,20`, probes choosing on
val): 4.8 minutes (493 steps) -> 89.85% linear probe / 87.71% kNN-20 test;
19.9 minutes (2250 steps) -> 90.86% / 88.43%; two more 20-minute runs
(2263, 2243 steps) 90.03% / 88.87% and 90.45% / 88.67% (raw pixels: 84.55% /
86.17%; random-init encoder: 83.26% / 80.47%). With jitter strength 0.5,
five 20-minute runs on this VM kind read 89.95-90.6% / 87.69-88.45%, and
90.7% / 88.1% on 2026-12-01's VM (twice the matmul rate); every run is in
benchmarks/README.md.
"""

from contrastive_jax import config_defaults


def get_config(arg: str | None = None):
  config = config_defaults.pretrain_defaults()
  config.batch_size = 256
  config.num_epochs = 20
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2

  config.data.source = 'idx'
  config.data.val_examples = 5000   # probe/recipe choices on this carve, never on test
  # Random-resized crops come out at 20 px (eval resizes the 28 px images to
  # 20 too): a step costs about half (~430 vs ~230 images/s here), so a budget
  # buys ~1.9x the epochs. 5-minute val linear probe: 28 px 85.8%, 20 px 87.8%,
  # 16 px 86.3% (16 px then ran no faster: XLA:CPU's conv on its 2x2 last
  # stage). With that fixed, 16 px runs 1.8x the 20 px step and still loses
  # on val: 88.9% against 90.2% in 5 minutes (NOTES.md, recipe idea 9).
  config.data.image_size = 20

  # A garment is most of a 28 px frame: crops below ~1/4 of it rarely keep
  # enough of it to match its pair.
  config.augment.crop_area_min = 0.25
  # One channel: only brightness and contrast apply (no hue/saturation).
  # Strength 1.0, not CIFAR's 0.5: at the step count of 20 CPU minutes (2300
  # steps, an H200 sweep, two seeds each) val linear probe 91.57% against
  # 90.91% (kNN-20 test 88.80% against 87.76%); 0.75 and 1.5 read 91.10% and
  # 90.76% val (NOTES.md, recipe idea 19).
  config.augment.jitter_strength = 1.0
  config.augment.blur_prob = 0.0    # no blur at 28 px (as CIFAR)

  config.model.resnet.depth = 0
  config.model.resnet.stage_sizes = (1, 1, 1)
  config.model.resnet.block = 'basic'
  # Width 64 (h 256): at the step counts that 20 (5) CPU minutes buy, width
  # 32 / 64 / 128 reached 86.1 / 87.8 / 87.6% (84.7 / 86.1% at 5 min) val
  # linear-probe accuracy: a wider h pays for its 3x slower step (recipe sweep
  # on an H200 at CPU-equivalent steps, benchmarks/NOTES.md).
  config.model.resnet.base_width = 64      # h width 256
  config.model.resnet.stem = 'cifar'
  # 3x3/2 stem: every feature map halves, a step costs ~1/3 (measured 424 vs
  # 111 steps in 5 contended minutes) and 5-minute linear-probe accuracy rose
  # from 81.6% to 83.7% (benchmarks/NOTES.md, "Fashion-MNIST recipe").
  config.model.resnet.stem_stride = 2
  # h = the last feature map flattened (3x3x256 = 2304 at 20 px), not its
  # global average: a deviation from SimCLR's ResNet for small, centred
  # images, where where-a-part-is carries the class (sleeve vs strap) and
  # global pooling throws it away. 5-minute runs: avg 87.4% linear / 85.2%
  # kNN-20 test, flatten 89.8% / 87.5%; 20 minutes: avg 87.8% / 86.4%,
  # flatten 90.3% / 87.98% (benchmarks/NOTES.md, idea 6).
  config.model.resnet.pool = 'flatten'
  config.model.num_proj_layers = 2
  # Every map here is small (10, 5, 3 px), where XLA's own (Eigen) weight
  # gradient beats kernels/cpu_conv.py's: paired with ours in one process
  # (20-40 pairs) the step ran 1.07-1.18x faster, 413 -> 489 images/s with
  # this value (NOTES.md, throughput idea 38). It needs the Eigen
  # convolutions the binaries switch on (kernels/xla_cpu.py).
  config.kernels.conv_xla_wgrad_below = 16
  # The head's hidden layer stays 256 wide (h's width with avg pooling), so
  # its first layer costs 2304x256, not 2304x2304, per view.
  config.model.proj_hidden_dim = 256
  config.model.proj_dim = 64

  # T 0.1 read +0.46 val linear at 600 steps but lost 0.6 linear / 0.7 kNN-20
  # val at the 20-minute step count; crop area >= 0.4, LR 0.15, a 512 head,
  # width 96 and 28 px crops stayed within the seed spread (NOTES.md, recipe
  # ideas 10-16).
  config.simclr.temperature = 0.2
  config.optim.name = 'lars'
  config.optim.learning_rate = 0.075
  config.optim.lr_scaling = 'sqrt'  # SimCLR's rule for small batches / short runs
  config.optim.weight_decay = 1e-6
  config.optim.warmup_fraction = 0.05
  if arg:
    raise ValueError(f"configs/fashion_mnist.py takes no argument, not {arg!r}.")
  return config
