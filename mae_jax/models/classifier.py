"""An MAE-family encoder with a head: the model of the probe, finetune and scratch stages.

Parameters: {"backbone": {"encoder": ...}, "head": ...}. The backbone is the
same module class as in pretraining, so `params["encoder"]` of a pretrain
checkpoint drops into `params["backbone"]["encoder"]` unchanged; the decoder
is never called here and so has no parameters.
"""

from __future__ import annotations

import flax.linen as nn

from mae_jax.models import heads


class EncoderClassifier(nn.Module):
  backbone: nn.Module  # an MAE-family module (registry.MAE_FAMILY)
  num_outputs: int = 1
  pool: str = "mean"
  head_bn: bool = False
  include_cls: bool = False
  head_init_std: float = 0.01  # MAE recipe: 0.01 for the probe, 2e-5 for finetuning

  @nn.compact
  def __call__(self, images, train: bool = False, patch_ids=None):
    # the sparse-token encoder takes the occupied-patch lists of the input pipeline
    extra = {} if patch_ids is None else {"patch_ids": patch_ids}
    feats = self.backbone.encode(images, train=train, **extra)
    head = heads.ClassifierHead(self.num_outputs, self.pool, self.head_bn, self.include_cls,
                                kernel_init=nn.initializers.truncated_normal(self.head_init_std),
                                name="head")
    return head(feats["tokens"], train, valid=feats.get("valid")), {"cls": feats["cls"],
                                                                   "mean": feats["mean"]}
