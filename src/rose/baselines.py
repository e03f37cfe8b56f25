"""Selection baselines that need no gradients: random, BM25, and embedding similarity (as in RDS).

Each returns similarities [N, M] of pool examples to the validation items (or plain scores), so
the same mean-over-shots / max-over-subtasks aggregation as ROSE applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel

from .encoding import Encoded, collate, token_batches
from .formats import Example, PreferencePair


def random_scores(n: int, seed: int) -> np.ndarray:
    """[N] uniform scores: the top share of them is a uniform random subset."""
    return np.random.default_rng(seed).random(n)


def _pool_text(ex: Example) -> str:
    return "\n".join(m["content"] for m in ex.messages)


def _target_text(pair: PreferencePair) -> str:
    return "\n".join([*(m["content"] for m in pair.prompt), pair.chosen])


def bm25_similarities(pool: Sequence[Example], targets: Sequence[PreferencePair]) -> np.ndarray:
    """[N, M] BM25 score of each pool example (all its turns) for each target (prompt + chosen)."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([_pool_text(e) for e in pool], stopwords="en", show_progress=False), show_progress=False)
    queries = bm25s.tokenize([_target_text(p) for p in targets], stopwords="en", return_ids=False, show_progress=False)
    return np.stack([retriever.get_scores(q) for q in queries], axis=1)


@torch.no_grad()
def mean_hidden_states(model: PeftModel, seqs: Sequence[Encoded], pad_id: int, batch_tokens: int, device: torch.device) -> torch.Tensor:
    """[N, H] unit-norm mean of the base model's last hidden states over each sequence's tokens."""
    decoder = model.get_base_model().get_decoder()
    out = None
    with model.disable_adapter():
        for idx in token_batches([len(s) for s in seqs], batch_tokens):
            batch = collate([seqs[i] for i in idx], pad_id)
            mask = batch["attention_mask"].to(device)
            hidden = decoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state.float()
            pooled = (hidden * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
            if out is None:
                out = torch.zeros(len(seqs), pooled.shape[1])
            out[idx] = pooled.cpu()
    return F.normalize(out, dim=1)


def embedding_similarities(model: PeftModel, pool: Sequence[Encoded], targets: Sequence[Encoded], pad_id: int,
                           batch_tokens: int, device: torch.device) -> np.ndarray:
    """[N, M] cosine of mean-pooled base-model hidden states: pool examples vs targets (prompt + chosen)."""
    a = mean_hidden_states(model, pool, pad_id, batch_tokens, device)
    b = mean_hidden_states(model, targets, pad_id, batch_tokens, device)
    return (a @ b.T).double().numpy()
