"""The Vicuna v0 conversation template (``CONV_VISION``) and the turn rules both inference paths follow.

After an image and a question ``Q`` the prompt reads (``IMAGE_MESSAGE`` from :mod:`minigpt4.constants`)::

    Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I
    provide it to you. Please answer my questions.###Human: IMAGE_MESSAGE Q###Assistant:

``Chat`` (the demo) and ``BatchCaptioner`` (caption.py) build their turns with :func:`add_image`,
:func:`add_question` and, for an answer that does not complete, :func:`undo_question`.
"""

from __future__ import annotations

import dataclasses
from enum import Enum, auto
from typing import Any, List, Optional

from minigpt4.common.errors import MiniGPT4Error
from minigpt4.constants import IMAGE_MESSAGE, IMAGE_PLACEHOLDER


class SeparatorStyle(Enum):
    SINGLE = auto()
    TWO = auto()


@dataclasses.dataclass
class Conversation:
    system: str
    roles: List[str]
    messages: List[List[str]]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: Optional[str] = None
    skip_next: bool = False
    conv_id: Any = None

    def get_prompt(self) -> str:
        if self.sep_style == SeparatorStyle.SINGLE:
            seps = [self.sep, self.sep]
        elif self.sep_style == SeparatorStyle.TWO:
            seps = [self.sep, self.sep2]
        else:
            raise ValueError(f"Invalid style: {self.sep_style}")
        ret = self.system + seps[0]
        for i, (role, message) in enumerate(self.messages):
            ret += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
        return ret

    def append_message(self, role: str, message: Optional[str]) -> None:
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        return Conversation(
            system=self.system, roles=self.roles, messages=[[x, y] for x, y in self.messages], offset=self.offset,
            sep_style=self.sep_style, sep=self.sep, sep2=self.sep2, conv_id=self.conv_id,
        )


CONV_VISION = Conversation(
    system="Give the following image: <Img>ImageContent</Img>. "
    "You will be able to see the image once I provide it to you. Please answer my questions.",
    roles=("Human", "Assistant"),
    messages=[],
    offset=2,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
)


def neutralise_placeholder(text: str) -> str:
    """User text with the image placeholder made plain text (its angle brackets dropped), so a
    question that contains it cannot claim an image slot (the original failed with "Unmatched
    numbers of image placeholders and images" for the rest of the session)."""
    return text.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER[1:-1])


def add_image(conv: Conversation) -> None:
    """The Human turn that holds an image (its embedding goes where the placeholder is)."""
    conv.append_message(conv.roles[0], IMAGE_MESSAGE)


def add_question(conv: Conversation, text: str) -> None:
    """Ask ``text``: joined to a Human turn that holds only an image, else a new Human turn."""
    if not isinstance(text, str) or not text.strip():
        raise MiniGPT4Error("The message is empty: type a question or an instruction.")
    text = neutralise_placeholder(text)
    if conv.messages and conv.messages[-1][0] == conv.roles[0] and conv.messages[-1][1] == IMAGE_MESSAGE:
        conv.messages[-1][1] = " ".join([IMAGE_MESSAGE, text])
    else:
        conv.append_message(conv.roles[0], text)


def undo_question(conv: Conversation) -> None:
    """Take back the last question and its pending answer (an answer that failed or was cancelled),
    so the next question does not stack a second Human turn."""
    if conv.messages and conv.messages[-1][0] == conv.roles[1] and conv.messages[-1][1] is None:
        conv.messages.pop()
    if not conv.messages or conv.messages[-1][0] != conv.roles[0]:
        return
    if conv.messages[-1][1].startswith(IMAGE_MESSAGE + " "):
        conv.messages[-1][1] = IMAGE_MESSAGE
    elif conv.messages[-1][1] != IMAGE_MESSAGE:
        conv.messages.pop()
