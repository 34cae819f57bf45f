"""A character-level tokenizer that the project builds itself, for offline demos and tests.

It is a real ``PreTrainedTokenizerFast`` (saved and reloaded through ``save_pretrained`` /
``AutoTokenizer.from_pretrained``) with bos/eos/pad/mask tokens, one token per role and a chat template, so
every code path that serves a hub tokenizer (chat templating, prompt masking, padding, mask-token lookup) is
exercised without downloading anything.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Letters, digits, punctuation and space, newline: enough for the demo tasks and plain English text.
DEFAULT_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"

SPECIAL_TOKENS = {
    "pad_token": "<|pad|>",
    "bos_token": "<|bos|>",
    "eos_token": "<|eos|>",
    "unk_token": "<|unk|>",
    "mask_token": "<|mask|>",
}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# <|bos|><|user|>question<|assistant|>answer<|eos|> ... ; every assistant turn ends with eos.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET) -> PreTrainedTokenizerFast:
    """Build a character-level fast tokenizer with special tokens, role tokens and a chat template.

    Ids: special tokens first (pad=0, bos=1, eos=2, unk=3, mask=4), then role tokens, then one id per
    distinct character of ``alphabet`` in order. Unknown characters map to ``<|unk|>``.
    """
    chars = list(dict.fromkeys(alphabet))  # de-duplicate, keep order
    specials = list(SPECIAL_TOKENS.values()) + ROLE_TOKENS
    vocab = {tok: i for i, tok in enumerate(specials + chars)}

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    # One pre-token per character; special tokens are split off before this runs.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        additional_special_tokens=ROLE_TOKENS,
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
        **SPECIAL_TOKENS,
    )
    return tokenizer
