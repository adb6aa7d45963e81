"""Words-to-patches captioning: generated captioned scenes (or a Karpathy-split set), a ViT
patch encoder with a transformer decoder that returns its cross-attention, greedy and beam
decoding, COCO caption metrics, grounding scores and per-token attention figures.

Modules, one job each: scenes (generated data), karpathy (the caption JSON reader), store
(the prepared caption folder), dataset (in-memory sets and batches), vocab, model, decode,
train, metrics, render; for the pretrained CATR captioner: catr (the model), wordpiece (its
vocabulary), photos (the images it captions), pretrained (its files and one photo captioned).
"""
