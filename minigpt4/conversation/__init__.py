from minigpt4.conversation.conversation import (
    CONV_VISION,
    Chat,
    Conversation,
    SeparatorStyle,
    StoppingCriteriaSub,
)

__all__ = ["CONV_VISION", "Chat", "Conversation", "SeparatorStyle", "StoppingCriteriaSub"]
