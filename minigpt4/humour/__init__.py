from minigpt4.humour.scorer import HumourScorer

__all__ = ["HumourScorer"]
