"""What the masks look like, for the logs: size, spread, overlap and whether they look where the student lags.

Computed every training step without gradient and logged per point next to the loss terms
(``distill/<point>/<kind>_mask_support`` ...), and read by ``benchmarks/quality.py`` into its tables.
Shapes: ``B`` batch, ``M`` masks, ``L`` positions (``HW``) or channels (``C``).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def effective_support(masks: Tensor) -> Tensor:
    """``1/(B M) sum_{b,m} exp(H(q_bm)) / L`` with ``q_bm = M_bm / sum_l M_bml``: the share of the ``L`` positions
    (channels) a mask effectively covers (1 = uniform, ``1/L`` = one position). ``masks`` ``(B, M, L)``, non-negative."""
    q = masks / masks.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    entropy = -(q * q.clamp_min(1e-30).log()).sum(dim=-1)  # (B, M)
    return (entropy.exp() / masks.shape[-1]).mean()


def _ranks(values: Tensor) -> Tensor:
    """Ranks ``0 .. L-1`` along the last dimension (ties broken by position)."""
    order = values.argsort(dim=-1)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(values.shape[-1], device=values.device).expand_as(order))
    return ranks.to(values.dtype)


@torch.no_grad()
def rank_correlation(weights: Tensor, errors: Tensor) -> Tensor:
    """Spearman's rank correlation between ``weights`` and ``errors`` along ``L``, averaged over the batch:
    ``(B, L)`` each. ``+1``: the mask puts its weight where the student's error is largest; 0 for a constant row."""
    a, b = _ranks(weights.float()), _ranks(errors.float())
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    denominator = (a.square().sum(dim=-1) * b.square().sum(dim=-1)).sqrt()
    constant = (weights.amax(dim=-1) == weights.amin(dim=-1)) | (errors.amax(dim=-1) == errors.amin(dim=-1))
    return torch.where(constant, 0.0, (a * b).sum(dim=-1) / denominator.clamp_min(1e-30)).mean()


__all__ = ["effective_support", "rank_correlation"]
