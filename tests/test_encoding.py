"""Rendering through the chat template, loss masks, truncation and length-bucketed batches."""

from __future__ import annotations

import pytest

from rose.encoding import IGNORE, Encoded, collate, encode, pack, render, token_batches, token_packs
from rose.errors import InputError, PromptTooLong
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
    with pytest.raises(PromptTooLong) as e:  # a table's row, counted from 0 as dataset[i] counts
        encode(tokenizer, ({"role": "user", "content": "word " * 100},), "ok", 48, Origin("train.parquet", row=17), "messages")
    assert str(e.value).startswith("train.parquet, row 17, field 'messages': prompt is") and e.value.row == 17


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


# ----------------------------------------------------------------------------- BOS/EOS per template

CORPUS = ["Name a colour. Blue is a colour, and so is green.", "What is two plus two? Four, or 4.",
          "You are a helpful assistant. Answer briefly.\nLine two of the answer."]
LLAMA3 = ("{{- bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim"
          " + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
         "{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' + m['content'] | trim"
         " + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SPECIALS = ["<bos>", "<eos>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<start_of_turn>", "<end_of_turn>",
            "<|im_start|>", "<|im_end|>"]
CONVERSATIONS = [
    ([{"role": "user", "content": "Name a colour."}], "Blue."),
    ([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is two plus two?"},
      {"role": "assistant", "content": "Four."}, {"role": "user", "content": "And in digits?"}], " 4, with a leading space.\nLine two."),
]


def offline_tokenizer(chat_template: str | None, adds_bos: bool):
    """A byte-level BPE tokenizer trained on a few sentences, with a chat template like a real
    model's and, like Llama's and Gemma's, a BOS put before every text by default (or not)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", chat_template=chat_template)


@pytest.mark.parametrize("template,adds_bos,n_bos", [(LLAMA3, True, 1), (GEMMA, True, 1), (CHATML, False, 0), ("smollm2", False, None)],
                         ids=["llama3", "gemma", "chatml", "smollm2"])
def test_chat_templates_give_apply_chat_templates_tokens_with_one_bos_at_most(tokenizer, template, adds_bos, n_bos):
    """Token for token what the model's own tokenizer and template produce: the BOS once when the
    template writes it (even where the tokenizer would also add one), none for ChatML. (SmolLM2's
    BOS is <|im_start|>, which opens every turn.)"""
    tok = tokenizer if template == "smollm2" else offline_tokenizer(template, adds_bos)
    for prompt, response in CONVERSATIONS:
        if template == GEMMA and prompt[0]["role"] == "system":
            with pytest.raises(InputError, match="chat template refuses this conversation.*System role not supported") as e:
                encode(tok, prompt, response, 256, Origin("pool.jsonl", line=3))
            assert e.value.line == 3
            continue
        enc = encode(tok, prompt, response, 256, Origin("x"))
        full = tok.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=True)["input_ids"]
        head = tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)["input_ids"]
        assert list(enc.input_ids) == full and enc.n_prompt == len(head)
        assert n_bos is None or enc.input_ids.count(tok.bos_token_id) == n_bos


@pytest.mark.parametrize("adds_bos", [True, False], ids=["gemma-like base", "gpt-neox-like base"])
def test_without_a_template_the_plain_layout_starts_as_the_tokenizer_does(adds_bos):
    """A base model's text gets the BOS exactly where its tokenizer adds one by default (Gemma 3:
    mean response NLL 5.35 without it, 3.30 with it), the documented layout, and the EOS at the end."""
    tok = offline_tokenizer(None, adds_bos)
    prompt, response = CONVERSATIONS[1]
    enc = encode(tok, prompt, response, 256, Origin("x"))
    head = ("<|system|>\nAnswer briefly.\n<|user|>\nWhat is two plus two?\n<|assistant|>\nFour.\n"
            "<|user|>\nAnd in digits?\n<|assistant|>\n")
    assert list(enc.input_ids) == tok(head + response + "<eos>")["input_ids"]  # the tokenizer's own special tokens
    assert enc.n_prompt == len(tok(head)["input_ids"])
    assert (enc.input_ids[0] == tok.bos_token_id) == adds_bos and enc.input_ids.count(tok.bos_token_id) == adds_bos
    assert enc.input_ids[-1] == tok.eos_token_id
