"""The conversation template (``template``), what answering shares with batched captioning
(``decoding``) and ``Chat`` (``conversation``)."""

from minigpt4.conversation.conversation import Chat
from minigpt4.conversation.decoding import StoppingCriteriaSub
from minigpt4.conversation.template import CONV_VISION, Conversation, SeparatorStyle

__all__ = ["CONV_VISION", "Chat", "Conversation", "SeparatorStyle", "StoppingCriteriaSub"]
