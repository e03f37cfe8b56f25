"""Rendering through the chat template, loss masks, truncation and length-bucketed batches."""

from __future__ import annotations

import pytest

from rose.encoding import IGNORE, Encoded, collate, encode, pack, render, token_batches, token_packs
from rose.errors import InputError
from rose.formats import Origin

PROMPT = ({"role": "user", "content": "Name a colour."},)


def test_prompt_is_a_prefix_and_only_the_response_has_labels(tokenizer):
    head, tail = render(tokenizer, PROMPT, "Blue.")
    assert head.endswith("<|im_start|>assistant\n") and tail.startswith("Blue.") and "<|im_end|>" in tail
    enc = encode(tokenizer, PROMPT, "Blue.", 64, Origin("x"))
    assert tokenizer.decode(enc.input_ids[enc.n_prompt:]).startswith("Blue.")
    batch = collate([enc, encode(tokenizer, PROMPT, "A rather longer answer: green.", 64, Origin("x"))], tokenizer.pad_token_id)
    labels, mask = batch["labels"], batch["attention_mask"]
    assert (labels[0, : enc.n_prompt] == IGNORE).all() and (labels[0, enc.n_prompt : len(enc)] != IGNORE).all()
    assert (labels[0, len(enc):] == IGNORE).all() and (mask[0, len(enc):] == 0).all() and mask[1].all()


def test_long_response_is_cut_and_long_prompt_is_an_error(tokenizer):
    enc = encode(tokenizer, PROMPT, "word " * 200, 48, Origin("x"))
    assert len(enc) == 48 and enc.n_prompt < 48
    with pytest.raises(InputError) as e:
        encode(tokenizer, ({"role": "user", "content": "word " * 100},), "ok", 48, Origin("f.jsonl", line=7), "messages")
    assert "max_length (48)" in str(e.value) and e.value.line == 7 and e.value.field == "messages"


def test_token_batches_respect_budget_and_cover_everything():
    lengths = [5, 50, 7, 49, 20, 300, 21, 6]
    batches = token_batches(lengths, 100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100
    assert batches[0] == [5]  # the over-long example alone, first



def test_token_batches_cut_where_padding_is_least():
    """Greedy filling would put 100 with a 50 (50 tokens of padding) and the other three together;
    the same two batches can be cut with no padding at all."""
    lengths = [50, 100, 50, 50, 50]
    batches = token_batches(lengths, 200)
    assert batches == [[1], [0, 2, 3, 4]]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded == sum(lengths)


def test_token_batches_do_not_split_equal_lengths_needlessly():
    assert token_batches([10] * 8, 80) == [list(range(8))]
    assert len(token_batches([10] * 16, 80)) == 2


def test_pack_restarts_positions_and_labels_only_responses():
    batch = pack([Encoded((5, 6, 7, 8), 2), Encoded((9, 10, 11), 1)])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch["sequence_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1]]
    assert batch["cu_seq_lens"].tolist() == [0, 4, 7] and batch["max_length"] == 4
    # the second sequence's first token is never a target: the first sequence's end must not predict it
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 7, 8, IGNORE, 10, 11]]


def test_token_packs_fill_the_budget_longest_first_and_cover_everything():
    lengths = [5, 50, 7, 49, 20, 300, 21, 6]
    packs = token_packs(lengths, 100)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert packs[0] == [5]  # the over-long example alone, first
    assert all(sum(lengths[i] for i in p) <= 100 for p in packs[1:])
    assert len(packs) == 1 + -(-sum(lengths[i] for i in range(8) if i != 5) // 100)  # no pack left half-empty here
