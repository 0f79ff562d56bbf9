"""The same SimCLR step in PyTorch + lightly, timed beside ours by throughput.py.

  pip install torch torchvision lightly      # not a dependency of the project
  python benchmarks/throughput.py --batch 256 --torch both

Issue 5 sets the CPU target as a ratio to the naive JAX step "so at least
level with PyTorch + lightly". The naive step's time moves with the VM's page
fault cost (benchmarks/NOTES.md, idea 42), so the ratio alone cannot say
whether we are level with PyTorch; this module lets the same run time
PyTorch itself, on the same images and network, taking turns with the JAX
steps.

The step is written as lightly's SimCLR example writes it: torchvision's
ResNet (for images <= 64 px the CIFAR stem, a 3x3/1 conv and no max-pool, as
the project's `stem='cifar'`; fc dropped), lightly's SimCLRProjectionHead
(2 layers, BatchNorm), NTXentLoss, lightly's LARS, the two views through
the network one after the other, eager mode. Its input is made each step
by lightly's SimCLRTransform on the host (PIL, one image at a time) from the
same uint8 source images as the JAX steps, with the recipe's crop scale,
jitter strength and blur probability: the whole step, augmentation included,
as the project's step includes its own. `memory_format='channels_last'` is
the layout PyTorch documents as the faster one for CPU convolutions (oneDNN);
'channels_first' is PyTorch's default, what the example does.

--model tiny (--quick) maps to torchvision's ResNet with one BasicBlock per
stage: torchvision has no narrower ResNet, and --quick only checks that the
step runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

_INSTALL = 'pip install torch torchvision lightly'


def _import() -> tuple[Any, Any, Any]:
  """(torch, torchvision, lightly), or SystemExit saying how to install them."""
  try:
    import lightly  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(f'--torch needs PyTorch, torchvision and lightly ({e}); '
                     f'install them with `{_INSTALL}`, or run without --torch') from e
  return torch, torchvision, lightly


def versions() -> dict[str, Any]:
  torch, torchvision, lightly = _import()
  return dict(torch=torch.__version__, torchvision=torchvision.__version__,
              lightly=lightly.__version__, torch_threads=torch.get_num_threads())


def build_backbone(model: str, cifar_stem: bool, channels: int) -> Any:
  """torchvision ResNet returning the pooled features h (fc removed)."""
  torch, torchvision, _ = _import()
  nn = torch.nn
  if model == 'tiny':
    net = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
  else:
    net = {'resnet18': torchvision.models.resnet18,
           'resnet50': torchvision.models.resnet50}[model]()
  if cifar_stem:
    net.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
  elif channels != 3:
    net.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
  net.fc = nn.Identity()
  return net


@dataclasses.dataclass
class TorchStep:
  """step(): one training step, augmentation included; returns the loss.
  augment(): the augmentation alone (its share of the step)."""
  name: str
  memory_format: str
  step: Callable[[], float]
  augment: Callable[[], Any]


def make_step(images: np.ndarray, *, model: str, image_size: int, temperature: float,
              lr: float, jitter_strength: float, blur_prob: float, min_scale: float,
              memory_format: str = 'channels_first', seed: int = 0) -> TorchStep:
  """A PyTorch + lightly SimCLR step on `images` ([N, H, W, C] uint8)."""
  torch, _, lightly = _import()
  from lightly.loss import NTXentLoss  # pylint: disable=g-import-not-at-top
  from lightly.models.modules import SimCLRProjectionHead  # pylint: disable=g-import-not-at-top
  from lightly.transforms import SimCLRTransform  # pylint: disable=g-import-not-at-top
  from lightly.utils.lars import LARS  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top  (torchvision's dependency)
  del lightly
  if memory_format not in ('channels_first', 'channels_last'):
    raise ValueError(f"memory_format={memory_format!r}: use 'channels_first' or "
                     "'channels_last'")
  fmt = (torch.channels_last if memory_format == 'channels_last'
         else torch.contiguous_format)
  torch.manual_seed(seed)
  channels = images.shape[-1]
  backbone = build_backbone(model, cifar_stem=image_size <= 64, channels=channels)
  width = 2048 if model == 'resnet50' else 512
  net = torch.nn.Sequential(backbone, SimCLRProjectionHead(width, width, 128))
  net = net.to(memory_format=fmt).train()
  criterion = NTXentLoss(temperature=temperature)
  optimizer = LARS(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-6)
  extra = {} if channels == 3 else dict(normalize=dict(mean=[0.5], std=[0.5]))
  transform = SimCLRTransform(input_size=image_size, cj_strength=jitter_strength,
                              gaussian_blur=blur_prob, min_scale=min_scale, **extra)
  pil = [Image.fromarray(im[..., 0] if channels == 1 else im) for im in images]

  def augment() -> tuple[Any, Any]:
    views = [transform(im) for im in pil]
    x0 = torch.stack([v[0] for v in views]).contiguous(memory_format=fmt)
    x1 = torch.stack([v[1] for v in views]).contiguous(memory_format=fmt)
    return x0, x1

  def step() -> float:
    x0, x1 = augment()
    loss = criterion(net(x0), net(x1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())

  name = 'torch_' + ('channels_last' if memory_format == 'channels_last' else 'nchw')
  return TorchStep(name, memory_format, step, augment)


def encoder_parameter_count(model: str, cifar_stem: bool, channels: int) -> int:
  """Trainable parameters of the torch backbone (the test compares it with
  the project's encoder: the same network)."""
  net = build_backbone(model, cifar_stem, channels)
  return sum(p.numel() for p in net.parameters() if p.requires_grad)
