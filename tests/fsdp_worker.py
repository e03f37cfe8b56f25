"""LoRA training of a tiny random Llama whose decoder layers are sharded over the processes when it
runs under torchrun (model.shard=fsdp); `test_fsdp.py` runs `train` in its own process and this
script on two, and compares their checkpoints:

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/fsdp_worker.py POOL OUT

OUT/full is a run of two epochs; OUT/resumed the same run stopped in the middle of its second epoch
(after the resume point of its first step is written) and run again, so that it resumes from there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from conftest import tiny_llama

import rose.train
from rose.config import LoraConfig, ModelConfig, TrainConfig
from rose.distributed import Dist, leave_process_group
from rose.encoding import Encoded, encode_example
from rose.formats import read_pool
from rose.models import add_lora, load_tokenizer, shard_model
from rose.train import Checkpoint, train_lora

# 3 examples a step, each a micro-batch of its own (every example is longer than 40 tokens): one
# process makes two passes a step, the other one and a padding pass; clipping acts on every step;
# a resume point after every step but an epoch's last
SETTINGS = TrainConfig(epochs=2, lr=1e-2, batch_size=3, micro_batch_tokens=40, warmup_ratio=0.25, max_grad_norm=0.02,
                       resume_every=1)
# the whole state is gathered for each resume point and epoch end: twice and once an epoch; the
# fifth gathering is the second epoch's second resume point, so the first one is on disk
STOP_AT_GATHERING = 5


class Stopped(Exception):
    """Raised on every process at the same point of training, before any collective of that point."""


def examples(tokenizer, pool: Path) -> list[Encoded]:
    """The pool's first 7 examples: 3 steps an epoch, the last of one example."""
    return [encode_example(tokenizer, e, 64) for e in read_pool([pool])[:7]]


def train(out: Path, rows: list[Encoded], tokenizer, dist: Dist, settings: TrainConfig = SETTINGS,
          log=lambda _: None) -> list[Checkpoint]:
    """Train fresh rank-2 adapters (the same weights every call), sharded when there are several processes."""
    model = add_lora(tiny_llama(len(tokenizer)), LoraConfig(r=2, alpha=8, dropout=0.0))
    if dist.world > 1:
        shard_model(model, torch.device("cpu"))
    return train_lora(model, rows, settings, out, tokenizer.pad_token_id, 0, dist, save_checkpoints=True, log=log)


def train_until_stopped(out: Path, rows: list[Encoded], tokenizer, dist: Dist) -> None:
    """`train`, stopped at the STOP_AT_GATHERING-th gathering of the training state."""
    whole_state, calls = rose.train._whole_state, []

    def stop_at(*args):
        calls.append(None)
        if len(calls) == STOP_AT_GATHERING:
            raise Stopped
        return whole_state(*args)

    rose.train._whole_state = stop_at
    try:
        train(out, rows, tokenizer, dist)
    except Stopped:
        pass
    finally:
        rose.train._whole_state = whole_state


def main(pool: Path, out: Path) -> None:
    torch.set_num_threads(1)
    dist, tokenizer = Dist.from_env(), load_tokenizer(ModelConfig())
    rows = examples(tokenizer, pool)
    train(out / "full", rows, tokenizer, dist)
    train_until_stopped(out / "resumed", rows, tokenizer, dist)
    said = []
    train(out / "resumed", rows, tokenizer, dist, log=said.append)
    assert said == [f"resuming epoch 2 after step 1 from {out / 'resumed/resume'}"], said
    leave_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
