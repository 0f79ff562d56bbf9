"""Speed code for CPU training: how the same model runs faster, never what it computes.

- cpu_conv: a flax Conv whose weight gradient (and strided input gradient)
  avoids XLA:CPU's slow convolution lowering.
- onednn_conv (+ onednn_conv.cc, compiled on first use): a flax Conv whose
  three passes run in oneDNN through JAX's FFI.
- sgns_update (+ sgns_update.cc): word2vec's whole negative-sampling step as
  one fused FFI call on the donated tables (word2vec/sgns.py picks it).
- ffi_build: compiling those .cc files once into a per-user cache.
- batchnorm: flax's BatchNorm with a hand-written, sum-based training gradient.
- xla_cpu: the XLA:CPU flag the binaries set before JAX starts.
- backend: `conv_cls(config.kernels)`, the one place where the convolution a
  model uses is chosen, and `kernels_defaults()`, that section's defaults.

Nothing here changes a model's parameters or the function it computes (up to
float rounding): every Conv has nn.Conv's parameter tree and the BatchNorm
flax's, so checkpoints move freely between the choices.
"""
