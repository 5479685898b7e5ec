"""What requests mean: tokenization, pre- and post-processing, per task."""

from squeezer.tasks.catalog import ENCODER_TASKS, build_tasks
from squeezer.tasks.classify import ClassifyRequest, LabelScore
from squeezer.tasks.embed import EmbedRequest, EmbedResult, EmbedTask, PooledHead, TokenVectorsHead
from squeezer.tasks.encoder import EncoderItem, EncoderRunner, EncoderTask, Head, Row
from squeezer.tasks.fill_mask import FillMaskRequest, MaskFill
from squeezer.tasks.question_answering import QAAnswer, QARequest
from squeezer.tasks.rerank import RerankHit, RerankRequest, RerankResult
from squeezer.tasks.token_classify import EntityGroup, TokenClassifyRequest, TokenEntity
from squeezer.tasks.tokenizer import TextTokenizer, TokenInfo
from squeezer.tasks.zero_shot import ZeroShotRequest, ZeroShotResult

__all__ = [
    "ENCODER_TASKS",
    "ClassifyRequest",
    "EmbedRequest",
    "EmbedResult",
    "EmbedTask",
    "EncoderItem",
    "EncoderRunner",
    "EncoderTask",
    "EntityGroup",
    "FillMaskRequest",
    "Head",
    "LabelScore",
    "MaskFill",
    "PooledHead",
    "QAAnswer",
    "QARequest",
    "RerankHit",
    "RerankRequest",
    "RerankResult",
    "Row",
    "TextTokenizer",
    "TokenClassifyRequest",
    "TokenEntity",
    "TokenInfo",
    "TokenVectorsHead",
    "ZeroShotRequest",
    "ZeroShotResult",
    "build_tasks",
]
