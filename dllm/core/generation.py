"""Low-confidence remasking sampler for masked diffusion LMs (MDLM arXiv 2406.07524; LLaDA arXiv 2502.09992).

Generation starts from the prompt followed by ``gen_length`` mask tokens. Each step runs the model on the
whole sequence, predicts every still-masked position and commits the ``k`` predictions the model is most
confident about (``k`` spreads ``gen_length`` evenly over ``steps``); committed tokens are never masked
again. After ``steps`` steps nothing is masked; the answer is everything before the first EOS.

The model must attend bidirectionally and take ``attention_mask`` so that prompt padding is ignored.
Prompts are left-padded, so every row's answer block occupies the same columns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class DiffusionGenerationConfig:
    """Options for ``generate``; override per call with ``dataclasses.replace``."""

    gen_length: int = 32
    """Number of answer positions after the prompt (answer plus EOS padding)."""
    steps: int | None = None
    """Denoising steps; ``None`` means ``gen_length`` (one token committed per step)."""
    temperature: float = 0.0
    """0 picks the argmax at every position; above 0 samples from the tempered softmax."""
    mask_token_id: int | None = None
    """Defaults to the tokenizer's mask token in ``generate_text``; required by ``generate``."""
    eos_token_id: int | None = None
    """Answers end at the first EOS; defaults to the tokenizer's in ``generate_text``."""
    pad_token_id: int = 0
    """Fills the left padding of shorter prompts (never attended)."""


def tokens_per_step(gen_length: int, steps: int) -> list[int]:
    """How many positions each step commits: ``gen_length`` spread evenly, earlier steps take the remainder."""
    if not 1 <= steps <= gen_length:
        raise ValueError(f"steps must be in [1, gen_length={gen_length}], got {steps}")
    base, extra = divmod(gen_length, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


@torch.no_grad()
def denoise_step(model, x: torch.Tensor, attention_mask: torch.Tensor, mask_token_id: int, k: int,
                 temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Commit the ``k`` most confident predictions among the masked positions of each row of ``x`` [B, L].

    Confidence is the probability the model gives its chosen token. Rows with fewer than ``k`` masked
    positions commit all of them. Returns a new tensor; unmasked positions are left unchanged.
    """
    logits = model(input_ids=x, attention_mask=attention_mask).logits.float()  # [B, L, V]
    probs = torch.softmax(logits, dim=-1)  # [B, L, V]
    if temperature > 0:
        tempered = torch.softmax(logits / temperature, dim=-1).flatten(0, 1)  # [B*L, V]
        pred = torch.multinomial(tempered, 1, generator=generator).view(x.shape)  # [B, L]
    else:
        pred = probs.argmax(dim=-1)  # [B, L]
    confidence = probs.gather(-1, pred.unsqueeze(-1)).squeeze(-1)  # [B, L]

    masked = x == mask_token_id  # [B, L]
    confidence = confidence.masked_fill(~masked, -1.0)  # committed and prompt positions never win
    k = min(k, x.shape[1])
    top = confidence.topk(k, dim=-1).indices  # [B, k]
    commit = torch.zeros_like(masked).scatter_(1, top, True) & masked  # [B, L]
    return torch.where(commit, pred, x)


@torch.no_grad()
def generate(model, prompt_ids: torch.Tensor, config: DiffusionGenerationConfig,
             attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``config.gen_length`` masked positions after left-padded ``prompt_ids`` [B, P].

    ``attention_mask`` [B, P] marks real prompt tokens (1) and left padding (0). Returns [B, P + gen_length]
    with no mask token left in the answer block.
    """
    if config.mask_token_id is None:
        raise ValueError("DiffusionGenerationConfig.mask_token_id is required")
    batch, prompt_len = prompt_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(prompt_ids)
    answer = torch.full((batch, config.gen_length), config.mask_token_id, dtype=prompt_ids.dtype,
                        device=prompt_ids.device)
    x = torch.cat([prompt_ids, answer], dim=1)  # [B, P + G]
    attn = torch.cat([attention_mask, torch.ones_like(answer)], dim=1)  # [B, P + G]

    for k in tokens_per_step(config.gen_length, config.steps or config.gen_length):
        x = denoise_step(model, x, attn, config.mask_token_id, k, config.temperature, generator)
    return x


def answer_ids(output: torch.Tensor, prompt_length: int, eos_token_id: int | None) -> list[list[int]]:
    """The generated ids of each row of ``output`` [B, P + G], cut before the first EOS."""
    rows = []
    for row in output[:, prompt_length:].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id)]
        rows.append(row)
    return rows


def left_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into ``input_ids`` and ``attention_mask`` tensors [B, max_len]."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq):] = 1
    return ids, mask


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Chat-template a single user turn (with the assistant header) into ids, without double specials."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def generate_text(model, tokenizer, prompts: list[str], config: DiffusionGenerationConfig,
                  batch_size: int = 256, generator: torch.Generator | None = None) -> list[str]:
    """Answer each user prompt: chat template, left-pad, ``generate``, decode up to the first EOS."""
    mask_id = config.mask_token_id if config.mask_token_id is not None else tokenizer.mask_token_id
    eos_id = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.pad_token_id
    device = next(model.parameters()).device
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [encode_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
        ids, mask = left_pad(encoded, pad_id)
        cfg = replace(config, mask_token_id=mask_id, eos_token_id=eos_id, pad_token_id=pad_id)
        out = generate(model, ids.to(device), cfg, attention_mask=mask.to(device), generator=generator)
        for row in answer_ids(out.cpu(), ids.shape[1], eos_id):
            answers.append(tokenizer.decode(row, skip_special_tokens=True))
    return answers
