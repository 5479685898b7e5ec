"""What requests mean: tokenization, pre- and post-processing, per task."""

from squeezer.tasks.embed import EmbedItem, EmbedRequest, EmbedResult, EmbedRunner, EmbedTask
from squeezer.tasks.tokenizer import TextTokenizer, TokenInfo

__all__ = [
    "EmbedItem",
    "EmbedRequest",
    "EmbedResult",
    "EmbedRunner",
    "EmbedTask",
    "TextTokenizer",
    "TokenInfo",
]
