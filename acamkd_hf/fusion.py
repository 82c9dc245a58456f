"""STCA-FF: student-teacher cross-attention feature fusion (paper Sec. 3.2).

``Q = W_q F_T``, ``K = W_k F_S'``, ``V = W_v F_S'`` (1x1 convolutions, ``C -> C/2, C/2, C``) and
``F_fused = softmax(Q K^T / sqrt(C/2)) V`` over the ``HW`` tokens; one head, no residual, no norm. The fused feature
depends on the current student, which is what makes the masks derived from it *cooperative*.

Sequence reduction (ours, not the paper's; ``--fusion_kv_reduction``): the key/value source may be average-pooled
by ``R`` per side before its projections, as SegFormer's efficient self-attention and PVT's spatial-reduction
attention do (they use a strided conv + LayerNorm). The queries stay at full resolution, so ``F_fused`` and the
masks keep the map's ``H x W``; the attention costs ``O(HW * HW/R^2 * C)`` instead of ``O((HW)^2 C)``. Average
pooling rather than a strided conv: it adds no parameters (``R = 1`` is exactly the paper's fusion, and checkpoints
stay interchangeable across ``R``), and because the 1x1 projections are affine, projecting the pooled feature equals
pooling the projected keys and values: each reduced key/value is the mean of an ``R x R`` block of the full ones.

Factored form (ours, an exact rewriting; :class:`FactoredFusion`): when there are few keys (``N_k <=``
:data:`MAX_FACTORED_KEYS`, e.g. after the reduction) the attention weights ``A = softmax(Q K^T / sqrt(d))``
``(B, HW, N_k)`` are small, and the masks' path (``forward(..., factored=True)``) never forms ``F_fused = A V``:
the masks need only ``m_s F_fused = A (V m_s^T)`` (``M`` maps instead of ``C``) and ``GAP(F_fused) = mean_p(A) V``.
Likewise ``K Q^T = (K W_q) F_q + K b_q`` lets the scores skip the full-resolution query projection
(:meth:`StudentTeacherCrossAttention._scores`). Same numbers, a fraction of the arithmetic and memory at large maps
(docs/results.md, "Fusion cost").

Which path runs: the factored one whenever the keys are few. That is the default: ``--method acamkd`` (the
recommended variant) reduces the keys to at most :data:`DEFAULT_MAX_KV_TOKENS` (``--fusion_kv_reduction auto``);
the exact fusion takes it too on maps of at most :data:`MAX_FACTORED_KEYS` positions. With more keys (the exact
fusion, ``R = 1``, on a large map) the dense ``F_fused`` comes from the fused attention kernel
(:func:`~acamkd_hf.functional.cross_attention_fusion`), whose memory is O(HW).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .choices import require_choice
from .functional import cross_attention_fusion

#: Which feature feeds the query and which the key/value.
#: ``teacher_query``: the paper's STCA-FF (Q from the teacher, K/V from the aligned student).
#: ``student_query``: paper Table 9 ablation (Q from the student, K/V from the teacher).
#: ``teacher_only``: paper Table 10 "learnable teacher-only masks" (Q, K, V all from the teacher: no cooperation).
FUSION_MODES = ("teacher_query", "student_query", "teacher_only")
#: ``--fusion_kv_reduction auto``: the smallest ratio that leaves at most this many key/value tokens per image. 32:
#: R = 4 at the quality benchmark's 16x32 logits, R = 8 at 32x64, R = 16 at a 64x128 paper-scale level. Chosen on
#: the quality benchmark as the budget that keeps the exact fusion's quality while making the attention's cost
#: small; a smaller budget saved little more and did worse as the default (docs/results.md, "Fusion cost").
DEFAULT_MAX_KV_TOKENS = 32
#: At most this many key tokens: the attention weights are materialised and the fusion kept factored
#: (:class:`FactoredFusion`); they then take at most as much memory as a 256-channel feature map. Above it (the
#: exact fusion at large maps) the fused attention kernel runs, whose memory is O(HW), never O(HW * N_k).
MAX_FACTORED_KEYS = 256


def kv_reduction_ratio(reduction: int | str, height: int, width: int, max_kv_tokens: int = DEFAULT_MAX_KV_TOKENS) -> int:
    """The per-side ratio ``R`` for an ``H x W`` map: ``reduction`` itself when it is a number, else (``"auto"``) the
    smallest ``R >= 1`` with ``ceil(H/R) * ceil(W/R) <= max_kv_tokens``."""
    if reduction != "auto":
        ratio = int(reduction)
        if ratio < 1:
            raise ValueError(f"the key/value reduction ratio must be >= 1 or 'auto', got {reduction!r}")
        return ratio
    if max_kv_tokens < 1:
        raise ValueError(f"max_kv_tokens must be >= 1, got {max_kv_tokens}")
    ratio = max(1, math.isqrt(max(1, (height * width) // max_kv_tokens)))
    while math.ceil(height / ratio) * math.ceil(width / ratio) > max_kv_tokens:
        ratio += 1
    return ratio


def reduce_tokens(feature: Tensor, ratio: int) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, C, ceil(H/R), ceil(W/R))``: the mean of each ``R x R`` block (blocks cut by the
    map's edge average the positions they hold). ``R = 1`` returns ``feature`` itself."""
    if ratio == 1:
        return feature
    return F.avg_pool2d(feature, kernel_size=ratio, stride=ratio, ceil_mode=True)


class StudentTeacherCrossAttention(nn.Module):
    """Cross-attention fusion of a teacher and an aligned student feature of the same shape ``(B, C, H, W)``.

    Args:
        channels: ``C``, the teacher's channel count (the student is aligned to it first).
        mode: one of :data:`FUSION_MODES`.
        detach_student: detach ``F_S'`` where it enters the fusion (the project's documented default; the
            student then learns only through the masked imitation ``D = F_T - F_S'``, while the masks still follow
            its current state). ``False`` is the literal reading, with gradient from the masks into the student.
        kv_reduction: ``R``, the per-side pooling of the key/value source (1 = the paper's exact fusion), or
            ``"auto"``: the smallest ``R`` leaving at most ``max_kv_tokens`` key/value tokens (see
            :func:`kv_reduction_ratio`; decided per call from the map's size).
        max_kv_tokens: the token budget of ``"auto"``.
    """

    def __init__(
        self,
        channels: int,
        mode: str = "teacher_query",
        detach_student: bool = True,
        kv_reduction: int | str = 1,
        max_kv_tokens: int = DEFAULT_MAX_KV_TOKENS,
    ) -> None:
        super().__init__()
        kv_reduction_ratio(kv_reduction, 1, 1, max_kv_tokens)  # a bad value fails here, not in the first step
        self.kv_reduction = kv_reduction
        self.max_kv_tokens = max_kv_tokens
        require_choice("fusion_mode", mode, FUSION_MODES)
        if channels < 2:
            raise ValueError(f"fusion needs at least 2 channels (projections to C/2), got {channels}")
        self.mode = mode
        self.detach_student = detach_student
        self.query = nn.Conv2d(channels, channels // 2, kernel_size=1)  # W_q
        self.key = nn.Conv2d(channels, channels // 2, kernel_size=1)  # W_k
        self.value = nn.Conv2d(channels, channels, kernel_size=1)  # W_v

    def forward(self, teacher: Tensor, student: Tensor, factored: bool = False) -> Tensor | FactoredFusion:
        """``teacher`` ``F_T`` and aligned ``student`` ``F_S'``, both ``(B, C, H, W)`` -> ``F_fused`` ``(B, C, H, W)``.

        With ``factored=True``, ``F_fused`` as the masks consume it: a :class:`FactoredFusion` when the keys are few
        (``N_k <=`` :data:`MAX_FACTORED_KEYS`), else still the dense map from the fused attention kernel. (A flag of
        ``forward``, not another method: calls go through ``nn.Module.__call__``, so hooks and wrappers such as FSDP,
        which gathers the parameters in its ``forward``, see them.)
        """
        if self.detach_student:
            student = student.detach()
        if self.mode == "teacher_query":
            query_source, key_value_source = teacher, student
        elif self.mode == "student_query":
            query_source, key_value_source = student, teacher
        else:  # teacher_only
            query_source, key_value_source = teacher, teacher
        batch, _, height, width = teacher.shape
        key_value_source = reduce_tokens(key_value_source, kv_reduction_ratio(self.kv_reduction, height, width, self.max_kv_tokens))
        num_keys = key_value_source.shape[-2] * key_value_source.shape[-1]
        if num_keys > MAX_FACTORED_KEYS:
            fused = cross_attention_fusion(
                _project_tokens(self.query, query_source),
                _project_tokens(self.key, key_value_source),
                _project_tokens(self.value, key_value_source),
            )  # (B, HW, C)
            return fused.transpose(1, 2).reshape(batch, -1, height, width)
        # few keys: the projections through the convolutions' own calls (a wrapper may hold their parameters)
        keys = self.key(key_value_source).flatten(2).transpose(1, 2)  # (B, N_k, d)
        values = self.value(key_value_source).flatten(2).transpose(1, 2)  # (B, N_k, C)
        # A^T: each column (one query position) a softmax over the N_k keys
        fused = FactoredFusion(torch.softmax(self._scores(query_source, keys), dim=1), values, height, width)
        return fused if factored else fused.dense()

    def _scores(self, query_source: Tensor, keys: Tensor) -> Tensor:
        """``K Q^T / sqrt(d)`` ``(B, N_k, HW)`` (the scores transposed) for ``Q = W_q F_q + b_q``, ``keys`` = ``K``
        ``(B, N_k, d)``.

        Transposed, every product reads the feature map in its own ``(B, C, HW)`` layout and writes contiguous
        rows: no token-layout copy, and the masks' projection comes out as ``(B, M, HW)``. Computed as
        ``(K W_q) F_q + K b_q`` (keys brought back to the input's ``C`` channels: ``HW C N_k`` multiply-adds, one
        product) rather than as written (the 1x1 convolution to ``d`` channels at all ``HW`` query positions, then
        ``K Q^T``: ``HW d (C + N_k)``); the same numbers. With ``d = C/2`` the fold costs ``2 N_k / (C + N_k)``
        times the arithmetic, under 2x always and less whenever ``N_k < C``, and it saves the convolution, which
        costs more than that on the small maps of a CPU step, so the fold is always taken (docs/results.md,
        "Fusion cost"). A wrapped projection (e.g. FSDP's, which may hold a shard of ``W_q``) is not read directly:
        the queries then go through its own call. ``1/sqrt(d)`` is applied to the ``N_k`` keys.
        """
        features = query_source.flatten(2)  # (B, C, HW)
        keys = keys * keys.shape[-1] ** -0.5
        if type(self.query) is nn.Conv2d:
            keys_in_input = keys @ self.query.weight.flatten(1)  # K W_q: (B, N_k, C)
            key_bias = (keys @ self.query.bias).unsqueeze(2)  # K b_q: (B, N_k, 1)
            return torch.baddbmm(key_bias, keys_in_input, features)
        return keys @ self.query(query_source).flatten(2)  # K Q^T, Q^T = (B, d, HW)


@dataclass
class FactoredFusion:
    """``F_fused = A V`` kept as its two factors (exact; see the module docstring), ``A`` stored transposed.

    Attributes:
        weights: ``A^T`` ``(B, N_k, HW)``, the attention weights (each column, one query position, sums to 1).
        values: ``V`` ``(B, N_k, C)``.
        height, width: the map's ``H x W`` (``HW`` query positions, row-major).
    """

    weights: Tensor
    values: Tensor
    height: int
    width: int

    def dense(self) -> Tensor:
        """``F_fused`` ``(B, C, H, W)``: ``V^T A^T``."""
        fused = self.values.transpose(1, 2) @ self.weights  # (B, C, HW)
        return fused.view(fused.shape[0], -1, self.height, self.width)

    def project(self, units: Tensor) -> Tensor:
        """``units F_fused`` for ``units`` ``(M, C)``: ``(B, M, H, W)``, computed as ``(units V^T) A^T``."""
        projected = (units @ self.values.transpose(1, 2)) @ self.weights  # (B, M, HW)
        return projected.view(projected.shape[0], -1, self.height, self.width)

    def spatial_mean(self) -> Tensor:
        """``GAP(F_fused)`` ``(B, C)``: ``(sum_p A^T) V / HW`` (the ``1/HW`` on the ``C`` results, not the map)."""
        column_sums = self.weights.sum(dim=2).unsqueeze(1)  # (B, 1, N_k)
        return (column_sums @ self.values).squeeze(1) / (self.height * self.width)

    def float(self) -> FactoredFusion:
        return FactoredFusion(self.weights.float(), self.values.float(), self.height, self.width)


def _project_tokens(projection: nn.Conv2d, feature: Tensor) -> Tensor:
    """A 1x1 convolution applied in token layout: ``(B, C_in, H, W)`` -> contiguous ``(B, HW, C_out)``.

    Same numbers as ``projection(feature).flatten(2).transpose(1, 2)``. ``baddbmm`` reads the transposed token
    view as it is and writes the contiguous token layout the attention kernel needs; ``F.linear`` or a conv
    followed by ``.contiguous()`` would each materialise an extra (B, HW, C) copy (about 40 MiB per projection
    with its gradient at 100x100 tokens, C=256, batch 2).
    """
    if type(projection) is not nn.Conv2d:  # wrapped (e.g. by FSDP, which may hold a shard): its own call, a copy
        return projection(feature).flatten(2).transpose(1, 2).contiguous()
    tokens = feature.flatten(2).transpose(1, 2)  # (B, HW, C_in), a view
    weight = projection.weight.flatten(1).t().unsqueeze(0).expand(feature.shape[0], -1, -1)  # (B, C_in, C_out)
    return torch.baddbmm(projection.bias.view(1, 1, -1), tokens, weight)
