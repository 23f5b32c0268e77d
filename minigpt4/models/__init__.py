from minigpt4.models.mini_gpt4 import MiniGPT4

__all__ = ["MiniGPT4"]
