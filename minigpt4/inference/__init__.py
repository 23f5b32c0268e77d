"""Inference: ``loading`` (config -> model and image processor; the one device resolver),
``inputs`` (images, image lists, prompt files), ``batch`` (batched captioning) and ``records``
(the caption JSON Lines record: write, read, resume)."""
