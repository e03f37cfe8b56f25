"""Embedding similarity (as in RDS, Ivison et al. 2025): cosine of mean-pooled base-model hidden states.

Each pool example and each validation item (prompt + chosen response) is embedded as the mean of
the base model's last hidden states over its tokens (adapters off), unit-normalised; the same
mean-over-shots / max-over-subtasks aggregation as ROSE applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..influence import aggregate
from . import Scores, Selector, register_selector

if TYPE_CHECKING:
    import torch

    from ..context import Run
    from ..encoding import Encoded


def mean_hidden_states(model, seqs: Sequence[Encoded], pad_id: int, batch_tokens: int, device: torch.device) -> torch.Tensor:
    """[N, H] unit-norm mean of the base model's last hidden states over each sequence's tokens."""
    import torch
    import torch.nn.functional as F

    from ..encoding import collate, token_batches

    decoder = model.get_base_model().get_decoder()
    out = None
    with torch.no_grad(), model.disable_adapter():
        for idx in token_batches([len(s) for s in seqs], batch_tokens):
            batch = collate([seqs[i] for i in idx], pad_id)
            mask = batch["attention_mask"].to(device)
            hidden = decoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state.float()
            pooled = (hidden * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
            if out is None:
                out = torch.zeros(len(seqs), pooled.shape[1])
            out[idx] = pooled.cpu()
    return F.normalize(out, dim=1)


def embedding_similarities(model, pool: Sequence[Encoded], targets: Sequence[Encoded], pad_id: int,
                           batch_tokens: int, device: torch.device) -> np.ndarray:
    """[N, M] cosine of mean-pooled base-model hidden states: pool examples vs targets (prompt + chosen)."""
    a = mean_hidden_states(model, pool, pad_id, batch_tokens, device)
    b = mean_hidden_states(model, targets, pad_id, batch_tokens, device)
    return (a @ b.T).double().numpy()


def _embedding(run: Run) -> Scores:
    pairs, encoded = run.validation.records, run.validation.encoded
    sims = embedding_similarities(run.model.model, run.pool.encoded, [chosen for chosen, _ in encoded], run.model.pad_id,
                                  run.config.gradients.batch_tokens, run.device)
    subtasks = [p.subtask for p in pairs]
    scores, per_subtask = aggregate(sims, subtasks)
    return Scores(scores, per_subtask, list(dict.fromkeys(subtasks)))


register_selector(Selector("embedding", "Cosine of mean-pooled base-model hidden states to the validation prompts + "
                                        "chosen responses (RDS).", _embedding, reads_validation=True, needs_model=True))
