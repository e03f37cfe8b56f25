"""Per-example losses on response tokens: SFT for the pool, DPO for the target's preference pairs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..encoding import IGNORE, Encoded
from .attention import packed_attention


def response_logprobs(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each sequence's response tokens, and their count.

    batch: padded (`encoding.collate`: input_ids, attention_mask, labels [B, T]) or packed
    (`encoding.pack`: B sequences in one row). Labels are IGNORE outside the response.
    Returns (logp_sum [B] float32, n_tokens [B]). The vocabulary-sized logits are formed only at
    the response positions: the decoder's hidden states there are gathered and sent through the LM
    head (and the family's logit post-processing, `LogitFinish`), so prompt and padding positions
    cost no logits, no softmax and no memory for either; and in chunks (`token_nll`), so memory
    does not grow with the vocabulary.
    """
    targets = batch["labels"][:, 1:]  # position t predicts token t+1
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
    decoder, head, finish = lm_parts(model)
    if "cu_seq_lens" in batch:
        cu, longest = batch["cu_seq_lens"], batch["max_length"]
        with packed_attention(decoder):
            hidden = decoder(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                             cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest).last_hidden_state
        owner, n_seqs = batch["sequence_ids"][:, 1:][rows, cols], cu.numel() - 1
    else:
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
        owner, n_seqs = rows, targets.shape[0]
    nll = token_nll(hidden[rows, cols], targets[rows, cols], head, finish)
    logp = torch.zeros(n_seqs, dtype=nll.dtype, device=nll.device).index_add_(0, owner, -nll)
    return logp, torch.bincount(owner, minlength=n_seqs)


#: The most logits (tokens x vocabulary) formed at once: 2^26 floats, 256 MiB in float32. A pack of
#: 32,768 response tokens with Gemma 3's 262k vocabulary would otherwise form 32 GiB of logits, and
#: the same pack with SmolLM2's 49k 6 GiB; in chunks, peak memory no longer grows with the vocabulary.
LOGITS_PER_CHUNK = 2**26


def token_nll(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, finish: LogitFinish) -> torch.Tensor:
    """[K] negative log-likelihood of each target token from the decoder's hidden states [K, H],
    through the LM head and the family's logit post-processing, never forming more than
    `LOGITS_PER_CHUNK` logits at once. With gradients, each chunk's gradient w.r.t. its hidden
    states is taken as the chunk is formed (`_ChunkedNLL`), so backward keeps [K, H], not [K, V]."""
    chunk = max(1, LOGITS_PER_CHUNK // head.weight.shape[0])  # tokens per chunk: the head's rows are the vocabulary
    if hidden.requires_grad and torch.is_grad_enabled():
        if any(p.requires_grad for p in head.parameters()):
            raise ValueError("the LM head is trained (a LoRA target or unfrozen); rose keeps only the hidden states' "
                             "gradient of the chunked logits: train attention projections, not the head")
        return _ChunkedNLL.apply(hidden, targets, head, finish, chunk)
    return torch.cat([_nll(h, t, head, finish) for h, t in zip(hidden.split(chunk), targets.split(chunk))])


def _nll(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, finish: LogitFinish) -> torch.Tensor:
    logits = head(hidden)
    logits = finish(logits.float() if logits.dtype.itemsize < 4 else logits)  # bf16 logits finished in float32
    return F.cross_entropy(logits, targets, reduction="none")


class _ChunkedNLL(torch.autograd.Function):
    """Token NLLs whose backward is a stored [K, H] gradient: each token's loss depends on its own
    hidden state only, so d(sum_k g_k nll_k)/dh_k = g_k dnll_k/dh_k, and dnll/dh is taken chunk by
    chunk in forward (the same products autograd would run in backward: no recomputation, as in
    fused linear + cross-entropy kernels)."""

    @staticmethod
    def forward(ctx, hidden, targets, head, finish, chunk):  # noqa: ANN001 (autograd.Function signature)
        nll, grads = [], []
        with torch.enable_grad():
            for h, t in zip(hidden.split(chunk), targets.split(chunk)):
                h = h.detach().requires_grad_()
                loss = _nll(h, t, head, finish)
                grads.append(torch.autograd.grad(loss.sum(), h)[0])
                nll.append(loss.detach())
        ctx.save_for_backward(torch.cat(grads))
        return torch.cat(nll)

    @staticmethod
    def backward(ctx, grad_nll):  # noqa: ANN001
        (grad_hidden,) = ctx.saved_tensors
        wide = torch.promote_types(grad_hidden.dtype, torch.float32)  # scaled in float32 or wider, stored as the model's
        return (grad_hidden.to(wide) * grad_nll[:, None].to(wide)).to(grad_hidden.dtype), None, None, None, None


@dataclass(frozen=True)
class LogitFinish:
    """What a family's forward does to the LM head's output before the softmax, read from its
    config: multiply by `logit_scale` (Cohere), divide by `logits_scaling` (Granite), then soft-cap
    to c * tanh(z / c) with `final_logit_softcapping` (Gemma 2/3). Llama-shaped models do none."""

    scale: float = 1.0
    divide: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, config) -> LogitFinish:
        text = config.get_text_config()
        return cls(getattr(text, "logit_scale", None) or 1.0, getattr(text, "logits_scaling", None) or 1.0,
                   getattr(text, "final_logit_softcapping", None) or None)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.divide != 1.0:
            logits = logits / self.divide
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def lm_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, LogitFinish]:
    """(decoder, LM head, the family's logit post-processing) of a causal LM, through a PEFT wrapper.

    Together they give the logits of the model's own forward pass; `support.check_model_support`
    proves it on the loaded model before any stage runs.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), LogitFinish.of(base.config)


class ResponseLogprobs(torch.nn.Module):
    """`response_logprobs` as a module, so that DDP can wrap it for training."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return response_logprobs(self.model, batch)


def sft_losses(logp_sum: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """[B] mean negative log-likelihood over each example's response tokens."""
    return -logp_sum / n_tokens.clamp(min=1)


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """[B] -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), log-probs summed over the response."""
    return -F.logsigmoid(beta * dpo_margins(policy_chosen, policy_rejected, reference_chosen, reference_rejected))


def dpo_margins(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                reference_rejected: torch.Tensor) -> torch.Tensor:
    """[B] (pi_c - ref_c) - (pi_r - ref_r): how much more the policy than the reference prefers the chosen response."""
    return (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)


def per_token(logps: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Summed response log-probs divided by their responses' token counts (same shape)."""
    return logps / n_tokens.clamp(min=1)


class SFTLoss:
    """The mean NLL over each sequence's response tokens: the pool's loss, and LESS's validation
    loss on the chosen responses. An item is one sequence."""

    sequences_per_item = 1

    def sequences(self, item: Encoded) -> tuple[Encoded, ...]:
        return (item,)

    def __call__(self, logp: torch.Tensor, n_tokens: torch.Tensor, items: Sequence[int]) -> torch.Tensor:
        """The summed loss of a pack's items, given its sequences' summed log-probs and token counts."""
        return sft_losses(logp, n_tokens).sum()


def dpo_sigmoid_weights(policy: torch.Tensor, reference: torch.Tensor, n_tokens: torch.Tensor, beta: float,
                        normalise: bool = False) -> torch.Tensor:
    """[M] sigma(-beta * margin) of each pair from [M, 2] (chosen, rejected) log-probs: the factor
    the DPO gradient of a pair carries, near 1 for a pair the policy ranks wrong, near 0 for one it
    ranks right by far. `normalise`: log-probs divided by each response's token count (`per_token`).
    In float64, where a margin of a few thousand nats still gives a weight above zero (float32's
    sigmoid is 0 beyond about 1,000 nats at beta 0.1, and a checkpoint of zeros weights nothing)."""
    policy, reference = policy.double(), reference.double()
    if normalise:
        policy, reference = per_token(policy, n_tokens), per_token(reference, n_tokens)
    return torch.sigmoid(-beta * dpo_margins(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1]))


@dataclass(frozen=True)
class DPOLoss:
    """The DPO loss of each preference pair (Rafailov et al. 2023), against the reference model's
    summed log-probs [M, 2] (chosen, rejected): ROSE's validation loss. An item is a pair, whose
    chosen and rejected responses go through the network as two sequences. `per_token`: the
    margin from per-token mean log-ratios instead of summed ones (select.dpo_logprobs=mean), so a
    long response does not outweigh a short one.

    `direction`: the loss is -beta * margin instead, whose gradient is the DPO gradient divided by
    its positive per-pair factor sigma(-beta * margin): the same direction, which is all that a
    normalised feature keeps, and exact where that factor underflows (a pair the policy ranks right
    by hundreds of nats has sigma ~ 1e-65, a zero in float32 and bf16, and so a zero gradient)."""

    reference: torch.Tensor
    beta: float
    per_token: bool = False
    direction: bool = False
    sequences_per_item = 2

    def sequences(self, item: tuple[Encoded, Encoded]) -> tuple[Encoded, ...]:
        return item

    def __call__(self, logp: torch.Tensor, n_tokens: torch.Tensor, items: Sequence[int]) -> torch.Tensor:
        ref = self.reference[items].to(logp.device)
        policy = logp.view(-1, 2)
        if self.per_token:
            policy, ref = per_token(policy, n_tokens.view(-1, 2)), per_token(ref, n_tokens.view(-1, 2))
        if self.direction:
            return -self.beta * dpo_margins(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1]).sum()
        return dpo_losses(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], self.beta).sum()


class RecordedLoss:
    """An item loss that keeps each sequence's summed response log-prob and token count, [items,
    sequences per item], as the gradient pass forms them: what the DPO sigmoid weights need, with
    no second forward pass over the same sequences."""

    def __init__(self, loss: SFTLoss | DPOLoss, n_items: int) -> None:
        self.loss, self.sequences_per_item, self.sequences = loss, loss.sequences_per_item, loss.sequences
        self.logps = torch.zeros(n_items, self.sequences_per_item, dtype=torch.float64)
        self.counts = torch.zeros(n_items, self.sequences_per_item, dtype=torch.long)

    def __call__(self, logp: torch.Tensor, n_tokens: torch.Tensor, items: Sequence[int]) -> torch.Tensor:
        self.logps[items] = logp.detach().double().cpu().view(len(items), -1)
        self.counts[items] = n_tokens.cpu().view(len(items), -1)
        return self.loss(logp, n_tokens, items)


ItemLoss = SFTLoss | DPOLoss | RecordedLoss
