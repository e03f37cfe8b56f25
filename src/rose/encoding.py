"""Turn records into token ids: chat template, prompt/response split, truncation, padding or packing.

Pool examples and preference pairs go through the same rendering, so the SFT gradients of the
pool and the DPO gradients of the target live in the same space. Only response tokens carry loss.

- With a chat template (instruct models) the tokens are exactly `tokenizer.apply_chat_template`'s
  for the conversation: its text, tokenised without adding special tokens, so the BOS is there
  once when the template writes it and absent when it does not (ChatML). The prompt is the
  template's generation prompt; the response is the rest of the rendered conversation (the
  answer and the template's end-of-turn markers).
- Without one (base models) the plain layout is

      [BOS]<|user|>\n{content}\n...<|assistant|>\n{response}[EOS]

  one `<|role|>\n{content}\n` block per prompt message, the role markers as plain text; [BOS]
  is whatever the tokenizer puts before a text by default (Llama, Gemma, Mistral: their BOS;
  GPT-NeoX, Qwen: nothing), and [EOS] is the tokenizer's eos_token (none if it has none).

Prompt and response are tokenised separately, as a prompt is at generation time; with every
template tried (Llama 3, Gemma, ChatML) that gives apply_chat_template's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from .errors import ConfigError, PromptTooLong
from .formats import Example, Message, Origin, PreferencePair, TestPrompt

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + response; loss is on positions >= n_prompt."""

    input_ids: tuple[int, ...]
    n_prompt: int

    def __len__(self) -> int:
        return len(self.input_ids)


def render(tokenizer: PreTrainedTokenizerBase, prompt: Sequence[Message], response: str) -> tuple[str, str]:
    """Return (prompt text ending where the response starts, response text including its end marker).

    Raises jinja2's TemplateError where the chat template refuses the conversation (a system
    message for Gemma's, for instance)."""
    if tokenizer.chat_template:
        head = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(head):
            raise ConfigError(f"model.name: the chat template of {tokenizer.name_or_path} does not render the prompt "
                              "as a prefix of prompt + response, so the response tokens cannot be told apart")
        return head, full[len(head) :]
    head = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in prompt) + "<|assistant|>\n"
    return head, response + (tokenizer.eos_token or "")


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer puts before a text by default (its BOS, where it adds one)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    starts = [i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare]
    return full[: starts[0]] if starts else []


def encode(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Sequence[Message],
    response: str,
    max_length: int,
    origin: Origin,
    field: str = "messages",
) -> Encoded:
    """Tokenise one prompt/response; cut the response to fit, and reject a prompt that leaves no room."""
    try:
        head, tail = render(tokenizer, prompt, response)
    except TemplateError as e:
        raise origin.error(f"the model's chat template refuses this conversation ({e})", field=field) from e
    prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    if not tokenizer.chat_template:
        prompt_ids = leading_special_ids(tokenizer) + prompt_ids
    response_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    if len(prompt_ids) >= max_length:
        raise PromptTooLong(origin.path, f"prompt is {len(prompt_ids)} tokens, at least max_length ({max_length}); "
                            "raise model.max_length or set model.overlong=skip", line=origin.line, entry=origin.entry, row=origin.row,
                            field=field)
    if not response_ids:
        raise origin.error("response is empty after tokenisation", field=field)
    return Encoded(tuple(prompt_ids + response_ids[: max_length - len(prompt_ids)]), len(prompt_ids))


def encode_example(tokenizer: PreTrainedTokenizerBase, ex: Example, max_length: int) -> Encoded:
    return encode(tokenizer, ex.messages[:-1], ex.messages[-1]["content"], max_length, ex.origin)


def encode_pair(tokenizer: PreTrainedTokenizerBase, pair: PreferencePair, max_length: int) -> tuple[Encoded, Encoded]:
    return (
        encode(tokenizer, pair.prompt, pair.chosen, max_length, pair.origin, "chosen"),
        encode(tokenizer, pair.prompt, pair.rejected, max_length, pair.origin, "rejected"),
    )


def encode_test(tokenizer: PreTrainedTokenizerBase, item: TestPrompt, max_length: int) -> Encoded:
    return encode(tokenizer, item.prompt, item.golden, max_length, item.origin, "prompt")


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence. labels: token id on response positions, IGNORE elsewhere."""
    width = max(len(e) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        row = torch.tensor(e.input_ids, dtype=torch.long)
        ids[i, : len(e)] = row
        mask[i, : len(e)] = 1
        labels[i, e.n_prompt : len(e)] = row[e.n_prompt :]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack(batch: Sequence[Encoded]) -> dict[str, torch.Tensor | int]:
    """Concatenate sequences into one row with no padding (the gradient engine's layout).

    position_ids restart at 0 for each sequence and cu_seq_lens [B+1] marks where each starts,
    so attention stays inside a sequence (`grads.attention`); sequence_ids [1, T] says which
    sequence each position belongs to. A sequence's first token gets no label: in a padded row
    nothing predicts it, and here the previous sequence's last position must not.
    """
    lengths = torch.tensor([len(e) for e in batch], dtype=torch.long)
    ids = torch.tensor([t for e in batch for t in e.input_ids], dtype=torch.long)
    starts = torch.cumsum(lengths, 0) - lengths
    sequence_ids = torch.repeat_interleave(torch.arange(len(batch)), lengths)
    positions = torch.arange(len(ids)) - starts[sequence_ids]
    n_prompt = torch.tensor([max(1, e.n_prompt) for e in batch])[sequence_ids]
    labels = torch.where(positions >= n_prompt, ids, IGNORE)
    cu_seq_lens = torch.zeros(len(batch) + 1, dtype=torch.int32)
    cu_seq_lens[1:] = torch.cumsum(lengths, 0)
    return {"input_ids": ids[None], "labels": labels[None], "position_ids": positions[None],
            "sequence_ids": sequence_ids[None], "cu_seq_lens": cu_seq_lens, "max_length": int(lengths.max())}


def token_packs(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices into packs of at most `max_tokens` tokens, longest examples first.

    Packs carry no padding, so any grouping costs the same tokens; taking the longest first
    fills each pack close to the budget. An example longer than the budget gets a pack of its own.
    """
    packs: list[list[int]] = []
    used = max_tokens
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if used + lengths[i] > max_tokens:
            packs.append([])
            used = 0
        packs[-1].append(i)
        used += lengths[i]
    return packs


def token_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices into batches of similar length whose padded size stays within `max_tokens`.

    The examples are sorted by length and the sorted list is cut where the padded tokens plus a
    fixed cost per batch (`max_tokens // 8`, standing for the per-pass overhead) are least, by
    dynamic programming: a long-tailed length distribution no longer puts a 2048-token example
    and a 700-token one in the same padded batch, as greedy filling did, nor is it cut into many small passes. An example longer than the budget gets
    a batch of its own. Batches are returned longest first, so the largest memory use shows up at once.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    width = np.array([lengths[i] for i in order], dtype=np.int64)  # non-increasing
    n, overhead = len(order), max_tokens // 8
    best = np.zeros(n + 1)  # best[j]: least cost of batching the j longest examples
    start = np.zeros(n + 1, dtype=np.int64)  # where the last batch of that solution starts
    for j in range(1, n + 1):
        # a batch order[i:j] is as wide as its first (longest) member
        i = np.arange(max(0, j - max(1, max_tokens // max(1, width[j - 1]))), j)
        fits = ((j - i) * width[i] <= max_tokens) | (i == j - 1)
        i = i[fits]
        cost = best[i] + (j - i) * width[i] + overhead
        k = int(np.argmin(cost))
        best[j], start[j] = cost[k], i[k]
    batches, j = [], n
    while j > 0:
        batches.append(order[start[j] : j])
        j = int(start[j])
    return batches[::-1]
