"""Embedding similarity: cosine of pooled base-model hidden states, as in RDS and RDS+.

Each pool example (prompt + response, in the model's chat layout) and each validation item
(prompt + chosen response) is embedded from the base model's last hidden states (after the final
norm, adapters off), unit-normalised.
- `embedding` (RDS): the plain mean over the sequence's tokens; mean over shots, max over subtasks.
- `rds+` (RDS+, Ivison et al. 2025, their `compute_influence_cosinesim.py --pooling weighted_mean`):
  the mean weighted by position, token i of L weighing (i + 1) / (L (L + 1) / 2), so later tokens,
  which have read more of the text, count more; each subtask's score is the max over its validation
  items and the budget goes round-robin over the subtasks (their `get_top_aggregated_influences.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import SIMILARITY_OPTIONS, Scores, SelectionOptions, Selector, register_selector, similarity_scores

if TYPE_CHECKING:
    import torch

    from ..context import Run
    from ..encoding import Encoded

POOLINGS = ("mean", "position")


def pooled_hidden_states(model, seqs: Sequence[Encoded], pad_id: int, batch_tokens: int, device: torch.device,
                         pooling: str = "mean") -> torch.Tensor:
    """[N, H] unit-norm pooled last hidden states of the base model over each sequence's tokens:
    their mean, or their position-weighted mean (token i weighs i + 1)."""
    import torch
    import torch.nn.functional as F

    from ..encoding import collate, token_batches

    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    decoder = model.get_base_model().get_decoder()
    out = None
    with torch.no_grad(), model.disable_adapter():
        for idx in token_batches([len(s) for s in seqs], batch_tokens):
            batch = collate([seqs[i] for i in idx], pad_id)  # right-padded: position i is token i
            mask = batch["attention_mask"].to(device)
            hidden = decoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state.float()
            weights = mask.float()
            if pooling == "position":
                weights = weights * torch.arange(1, mask.shape[1] + 1, device=device)
            pooled = (hidden * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)
            if out is None:
                out = torch.zeros(len(seqs), pooled.shape[1])
            out[idx] = pooled.cpu()
    return F.normalize(out, dim=1)


def embedding_similarities(model, pool: Sequence[Encoded], targets: Sequence[Encoded], pad_id: int,
                           batch_tokens: int, device: torch.device, pooling: str = "mean") -> np.ndarray:
    """[N, M] cosine of pooled base-model hidden states: pool examples vs targets (prompt + chosen)."""
    a = pooled_hidden_states(model, pool, pad_id, batch_tokens, device, pooling)
    b = pooled_hidden_states(model, targets, pad_id, batch_tokens, device, pooling)
    return (a @ b.T).double().numpy()


def _similarities(run: Run, pooling: str) -> np.ndarray:
    return embedding_similarities(run.model.model, run.pool.encoded, [chosen for chosen, _ in run.validation.encoded],
                                  run.model.pad_id, run.config.gradients.batch_tokens, run.device, pooling)


def rds_plus_similarities(run: Run) -> np.ndarray:
    """[N, M] RDS+ similarities: position-weighted mean pooling."""
    return _similarities(run, "position")


def _embedding(run: Run) -> Scores:
    return similarity_scores(run, _similarities(run, "mean"))


def _rds_plus(run: Run) -> Scores:
    return similarity_scores(run, rds_plus_similarities(run))


register_selector(Selector("embedding", "Cosine of mean-pooled base-model hidden states to the validation prompts + "
                                        "chosen responses (RDS).", _embedding,
                           reads_validation=True, needs_model=True, options=SIMILARITY_OPTIONS))
register_selector(Selector("rds+", "RDS+ (Ivison et al. 2025): cosine of position-weighted mean base-model hidden states to the "
                                   "validation prompts + chosen responses, max over each subtask's items, round-robin over subtasks.",
                           _rds_plus, reads_validation=True, needs_model=True,
                           options=SIMILARITY_OPTIONS, defaults=SelectionOptions(balance="subtasks", over_shots="max")))
