"""The LM head's best candidates recomputed from the float weight.

A head that multiplies by rounded weights (int8, bfloat16) ranks the vocabulary
almost as float32 does, but near-ties at the top flip, and bfloat16 logits, with
eight significant bits, tie outright. The head is tied to the float embedding, so
recomputing a row's few best candidates from it costs a few dot products and gives
the winner, and the probabilities sampling draws from, float32 logits whenever
float32's winner is among the candidates.
"""

from __future__ import annotations

from typing import Any

from ctxproto._extras import require

__all__ = ["RESCORED", "rescore_best", "rescores_in_float"]

RESCORED = 64
"""LM-head candidates per row whose logits are recomputed in float."""


def rescore_best(logits: Any, rows: Any, weight: Any, bias: Any | None) -> Any:
    """``logits`` ([rows, vocab], float32) with each row's ``RESCORED`` best recomputed.

    ``rows`` are the head's float inputs and ``weight`` its float ``[vocab, hidden]``
    weight; the update happens in place and ``logits`` is returned.
    """
    torch = require("torch", extra="runtime")
    best = logits.topk(min(RESCORED, logits.size(-1)), dim=-1).indices
    exact = torch.einsum("rd,rkd->rk", rows.float(), weight[best].float())
    if bias is not None:
        exact += bias[best]
    return logits.scatter_(-1, best, exact)


def rescores_in_float(head: Any) -> bool:
    """Whether ``head`` is a rounded LM head that rescores its best candidates.

    Code that ranks the vocabulary outside the head (a verifying forward of
    speculative decoding) must then call the head itself, so that its choices
    are the ones one-token steps make. Such heads say so with ``rescores_best``.
    """
    return getattr(head, "rescores_best", False) is True
