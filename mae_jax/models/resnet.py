"""Supervised CNN baselines: ResNet-15 of the CMS E2E papers and a ResNet-50.

Both take channels-last images [B, H, W, C] (125x125xC for the E2E data) and
return `(logits [B, num_outputs], aux)` with aux = {"features": pooled
features [B, F]}. BatchNorm layers keep running statistics in the
"batch_stats" collection: train with `train=True, mutable=["batch_stats"]`,
evaluate with `train=False` (running averages; nothing is mutated).

ResNet-15 (our reading of arXiv:1902.08276 / arXiv:2104.14659 and the public
E2E PyTorch code, `ResNet(in_channels, nblocks=3, fmaps=[16, 32])`):
  conv0   7x7, stride 1, padding 1, `width` (16) filters     125 -> 121
  ReLU, max-pool 2x2 stride 2                                121 -> 60
  stage 1 3 residual blocks, width -> width                  60
  stage 2 1 residual block, width -> 2*width (32), stride 2  60 -> 30
          (first 3x3 conv strided; 1x1 strided conv shortcut)
  stage 3 3 residual blocks, 2*width                         30
  global max-pool -> [B, 2*width] (optionally concatenated with `extra`
          per-jet scalars, as the reference appended the seed ieta/iphi)
  Dense -> num_outputs
  Each residual block: conv3x3 -> ReLU -> conv3x3, + shortcut, ReLU.
  15 = conv0 + 7 blocks x 2 convs (the 1x1 projection shortcut is not counted).
The public reference has no normalisation layers. `norm="batch"` (default)
adds BatchNorm after every conv (conv -> BN -> ReLU; BN before the residual
sum; BN on the projection shortcut) and drops the conv biases; `norm="none"`
reproduces the reference exactly: 90,161 parameters for 8 input channels
(86,241 for 3), vs 90,561 (86,641) with BatchNorm (+ 800 running statistics).

ResNet-50 (He et al. 2016, v1.5: stride on the 3x3 conv of the bottleneck):
bottleneck stages [3, 4, 6, 3] with widths 64, 128, 256, 512 (x4 expansion),
ImageNet stem (7x7 stride-2 conv, 3x3 stride-2 max-pool): 125 -> 63 -> 32,
then stages at 32, 16, 8, 4; global average pool; Dense. 23,525,761 parameters
for 8 channels and one output (+ 53,120 running statistics).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

# torchvision's ResNet initialisation (kaiming normal, fan_out, ReLU gain)
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
NORMS = ("batch", "none")


def _pad(k: int):
  return ((k, k), (k, k))


class _ConvNorm(nn.Module):
  """Conv (+ BatchNorm without conv bias when norm='batch')."""
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  norm: str = "batch"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    bn = self.norm == "batch"
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride,
                padding=_pad(self.padding), use_bias=not bn, kernel_init=conv_init,
                dtype=self.dtype, name="conv")(x)
    if bn:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       dtype=self.dtype, name="bn")(x)
    return x


class ResBlock(nn.Module):
  """E2E residual block: conv3x3 -> ReLU -> conv3x3, + shortcut, ReLU.

  Downsamples by 2 (strided first conv and a strided 1x1 conv shortcut)
  when the number of features changes, as the reference's
  `stride = out_channels // in_channels`.
  """
  features: int
  norm: str = "batch"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    cin = x.shape[-1]
    stride = 1 if cin == self.features else 2
    y = _ConvNorm(self.features, 3, stride, 1, self.norm, self.dtype, name="conv1")(x, train)
    y = nn.relu(y)
    y = _ConvNorm(self.features, 3, 1, 1, self.norm, self.dtype, name="conv2")(y, train)
    if stride != 1:
      x = _ConvNorm(self.features, 1, stride, 0, self.norm, self.dtype, name="shortcut")(x, train)
    return nn.relu(y + x)


class ResNet15(nn.Module):
  """ResNet-15 of the CMS E2E papers (see module docstring). `(logits, aux)`."""
  num_outputs: int = 1
  width: int = 16
  nblocks: int = 3
  norm: str = "batch"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False, extra=None):
    if self.norm not in NORMS:
      raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
    if images.ndim != 4:
      raise ValueError(f"images must be [B, H, W, C] channels-last, got {images.shape}")
    x = images.astype(self.dtype)
    x = _ConvNorm(self.width, 7, 1, 1, self.norm, self.dtype, name="conv0")(x, train)
    x = nn.relu(x)
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    i = 0
    for features, n in ((self.width, self.nblocks), (2 * self.width, 1),
                         (2 * self.width, self.nblocks)):
      for _ in range(n):
        x = ResBlock(features, self.norm, self.dtype, name=f"block_{i}")(x, train)
        i += 1
    feats = jnp.max(x, axis=(1, 2))
    h = feats if extra is None else jnp.concatenate([feats, jnp.asarray(extra, feats.dtype)], -1)
    logits = nn.Dense(self.num_outputs, dtype=self.dtype, name="fc")(h)
    return logits.astype(jnp.float32), {"features": feats}


class Bottleneck(nn.Module):
  """ResNet v1.5 bottleneck: 1x1 -> 3x3 (strided) -> 1x1 (x4), projection shortcut."""
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    out = 4 * self.features
    y = nn.relu(_ConvNorm(self.features, 1, 1, 0, "batch", self.dtype, name="conv1")(x, train))
    y = nn.relu(_ConvNorm(self.features, 3, self.stride, 1, "batch", self.dtype,
                          name="conv2")(y, train))
    y = _ConvNorm(out, 1, 1, 0, "batch", self.dtype, name="conv3")(y, train)
    if x.shape[-1] != out or self.stride != 1:
      x = _ConvNorm(out, 1, self.stride, 0, "batch", self.dtype, name="shortcut")(x, train)
    return nn.relu(y + x)


class ResNet50(nn.Module):
  """Standard bottleneck ResNet-50 ([3, 4, 6, 3]) for 125x125 inputs. `(logits, aux)`."""
  num_outputs: int = 1
  width: int = 64
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False, extra=None):
    if images.ndim != 4:
      raise ValueError(f"images must be [B, H, W, C] channels-last, got {images.shape}")
    x = images.astype(self.dtype)
    x = nn.relu(_ConvNorm(self.width, 7, 2, 3, "batch", self.dtype, name="stem")(x, train))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(1))
    for s, n in enumerate(self.stage_sizes):
      for j in range(n):
        stride = 2 if (s > 0 and j == 0) else 1
        x = Bottleneck(self.width * 2**s, stride, self.dtype, name=f"stage{s + 1}_block{j}")(x, train)
    feats = jnp.mean(x, axis=(1, 2))
    h = feats if extra is None else jnp.concatenate([feats, jnp.asarray(extra, feats.dtype)], -1)
    logits = nn.Dense(self.num_outputs, dtype=self.dtype, name="fc")(h)
    return logits.astype(jnp.float32), {"features": feats}
