"""Dataset loading, validation and collation for supervised fine-tuning.

Every dataset is converted to the OpenAI message format ``{"messages": [{"role", "content"}, ...]}``:

    from dllm.data import load_sft_dataset, SFTDataCollator
    dataset = load_sft_dataset("tatsu-lab/alpaca[train:1000,test:100]")
    collator = SFTDataCollator(tokenizer, max_seq_length=1024)
"""

from dllm.data.alpaca import ALPACA_FORMAT, ALPACA_HUB_ID, alpaca_to_messages
from dllm.data.collator import IGNORE_INDEX, ChatTemplateError, SFTDataCollator, assistant_spans, tokenize_messages
from dllm.data.loading import NAMED_FORMATS, load_sft_dataset, load_source_splits
from dllm.data.messages import (
    ALLOWED_ROLES,
    MESSAGES_FORMAT,
    DataValidationError,
    RowFormat,
    convert_rows,
    validate_messages,
)
from dllm.data.spec import DatasetSource, parse_dataset_spec

__all__ = [
    "ALLOWED_ROLES",
    "ALPACA_FORMAT",
    "ALPACA_HUB_ID",
    "IGNORE_INDEX",
    "MESSAGES_FORMAT",
    "NAMED_FORMATS",
    "ChatTemplateError",
    "DataValidationError",
    "DatasetSource",
    "RowFormat",
    "SFTDataCollator",
    "alpaca_to_messages",
    "assistant_spans",
    "convert_rows",
    "load_sft_dataset",
    "load_source_splits",
    "parse_dataset_spec",
    "tokenize_messages",
    "validate_messages",
]
