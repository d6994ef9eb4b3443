"""MAE families that specialise the ViT MAE's embedding or encoder (one family per file).

  depthwise.py  DepthwiseMAE: per-channel grouped-conv patch embedding
  convstem.py   ConvStemMAE: convolutional stem as patch embedding
  convmae.py    ConvMAE: hierarchical masked-conv stages + transformer stage
  channel.py    ChannelMAE: one token per (patch, detector channel)

Each is a `models.mae.MaskedAutoencoder`: same forward pass, `(pred, aux)`, `encode` and
interface as the ViT MAE; only the variant table, encoder and decoder differ.
"""
