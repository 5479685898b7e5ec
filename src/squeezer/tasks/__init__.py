"""What requests mean: tokenization, pre- and post-processing, per task."""

from squeezer.tasks.embed import EmbedRequest, EmbedResult, EmbedTask, PooledHead, TokenVectorsHead
from squeezer.tasks.encoder import EncoderItem, EncoderRunner, Head, Row
from squeezer.tasks.tokenizer import TextTokenizer, TokenInfo

__all__ = [
    "EmbedRequest",
    "EmbedResult",
    "EmbedTask",
    "EncoderItem",
    "EncoderRunner",
    "Head",
    "PooledHead",
    "Row",
    "TextTokenizer",
    "TokenInfo",
    "TokenVectorsHead",
]
