from minigpt4.models.hic_scorer import HICScorer
from minigpt4.models.mini_gpt4 import MiniGPT4

__all__ = ["HICScorer", "MiniGPT4"]
