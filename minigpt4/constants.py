"""Strings and URLs shared by the model, the conversation template, the CLIs and the tools."""

IMAGE_PLACEHOLDER = "<ImageHere>"
# the image message of the Human turn; a prompt line of the training prompt file contains it
IMAGE_MESSAGE = f"<Img>{IMAGE_PLACEHOLDER}</Img>"
# the question caption.py (and the per-epoch sample captions of training) ask for every image
DEFAULT_PROMPT = "Could you write a funny caption of this image for me?"

LAVIS_BLIP2_URL = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/"
EVA_VIT_G_URL = LAVIS_BLIP2_URL + "eva_vit_g.pth"
BLIP2_FLANT5XXL_URL = LAVIS_BLIP2_URL + "blip2_pretrained_flant5xxl.pth"

PLACEHOLDER_PREFIX = "/path/to/"  # weight paths still set to this stop the program at start-up
