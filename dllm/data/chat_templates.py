"""The chat template dllm supplies to tokenizers that have none (encoders: BERT, RoBERTa, ModernBERT), and its override.

Chat SFT renders every conversation with the tokenizer's chat template, and every verb asks its prompts through it.
Decoder checkpoints of chat models ship one; an encoder's tokenizer (``bert-base-uncased``, ``roberta-base``,
``answerdotai/ModernBERT-base``) has none. :data:`DEFAULT_CHAT_TEMPLATE` is then used, in the plain text these
tokenizers read well (no new tokens: every piece is ordinary text or a special token the tokenizer has)::

    [CLS]user: What is 2+2?[SEP]assistant: 4[SEP]

the start token (``cls_token``, else ``bos_token``, else nothing), then each turn as ``role: content`` closed by the
end-of-turn token (``eos_token``; a tokenizer without one, BERT's, gets its ``sep_token`` as ``eos_token``), and
``assistant:`` as the generation prompt. It is prefix-consistent, so prompt masking finds every assistant turn.

Which template is used, first that applies: ``--chat_template`` (the template text, or a file that holds it), the
tokenizer's own (saved in its ``tokenizer_config.json`` or ``chat_template.jinja``), :data:`DEFAULT_CHAT_TEMPLATE`.
The template is saved with the trained checkpoint's tokenizer, so the verbs read the same one back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dllm.errors import UsageError

logger = logging.getLogger(__name__)

DEFAULT_CHAT_TEMPLATE = (
    "{% if cls_token is defined and cls_token %}{{ cls_token }}{% elif bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ message['role'] + ': ' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)
"""``[CLS]user: question[SEP]assistant: answer[SEP]``; see the module docstring."""


@dataclass
class ChatTemplateOptions:
    """The chat template of a tokenizer that may have none (an encoder's)."""

    chat_template: str | None = field(default=None, metadata={
        "help": "A Jinja chat template, or a file that holds one, replacing the tokenizer's. Default: the "
                "tokenizer's own, else dllm's plain one ([CLS]user: ...[SEP]assistant: ...[SEP]; "
                "dllm.data.chat_templates.DEFAULT_CHAT_TEMPLATE)."})


def read_chat_template(value: str) -> str:
    """The template text of ``--chat_template``: the contents of the file it names, else the value itself.

    Raises:
        UsageError: an empty value, or a file that cannot be read.
    """
    if not value.strip():
        raise UsageError("--chat_template must be a Jinja template or a file holding one, got an empty string")
    try:
        is_file = Path(value).is_file()
    except OSError:  # a template longer than a file name may be
        is_file = False
    if is_file:
        try:
            return Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"--chat_template {value}: cannot read the file ({err})") from err
    if "{{" not in value and "{%" not in value:
        raise UsageError(f"--chat_template {value}: no such file, and not a Jinja template (no {{{{ or {{% in it)")
    return value


def supply_chat_template(tokenizer: Any, chat_template: str | None = None) -> Any:
    """Give ``tokenizer`` an end-of-turn token and a chat template where it has none (module docstring), logging
    in one line what was supplied; ``chat_template`` (text or a file) replaces the tokenizer's own. Returns it.

    Raises:
        UsageError: the tokenizer has neither an eos nor a sep token to close turns with, or a bad
            ``chat_template``.
    """
    supplied = []
    if tokenizer.eos_token is None:
        if tokenizer.sep_token is None:
            raise UsageError(f"{tokenizer.name_or_path}: the tokenizer has neither an eos nor a sep token to end "
                             "a turn (and an answer) with")
        tokenizer.eos_token = tokenizer.sep_token
        supplied.append(f"its sep token {tokenizer.sep_token} as the eos token")
    if chat_template is not None:
        tokenizer.chat_template = read_chat_template(chat_template)
        supplied.append("the chat template of --chat_template")
    elif tokenizer.chat_template is None:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        supplied.append("dllm's default chat template (role: content, turns closed by "
                        f"{tokenizer.eos_token}; dllm.data.chat_templates)")
    if supplied:
        logger.info("%s: the tokenizer uses %s", tokenizer.name_or_path or type(tokenizer).__name__,
                    " and ".join(supplied))
    return tokenizer
