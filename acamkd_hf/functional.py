"""The paper's equations as pure functions, in the style of ``torch.nn.functional``.

Each function implements exactly one equation of ACAM-KD (Lan & Tian, ICCV 2025; see
``docs/architecture.md`` and the method spec) or of a baseline, so that every equation can be checked on its own
against a from-the-formula reference. The modules in :mod:`acamkd_hf.fusion`, :mod:`acamkd_hf.masking` and
:mod:`acamkd_hf.losses` call these; nothing here holds parameters.

Shapes: ``B`` batch, ``C`` channels, ``H x W`` the feature map, ``L`` a flattened mask length, ``M`` masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .choices import require_choice

__all__ = [
    "cross_attention_fusion",
    "activate_masks",
    "channel_selection",
    "channel_masks_from_pooled",
    "spatial_selection",
    "squared_error_sums",
    "masked_error_ratio",
    "channel_masked_loss",
    "spatial_masked_loss",
    "dice_diversity",
    "feature_mse",
    "channel_standardize",
    "STANDARDIZE_OVER",
    "pearson_distillation",
    "channel_wise_distillation",
    "channel_wise_kl",
    "mgd_random_mask",
    "masked_generative_loss",
]


# --------------------------------------------------------------------------------------------------------------
# STCA-FF: student-teacher cross-attention feature fusion
# --------------------------------------------------------------------------------------------------------------
def cross_attention_fusion(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Single-head cross-attention over feature-map tokens: ``F_fused = softmax(Q K^T / sqrt(d)) V``.

    Args:
        query: ``(B, N_q, d)`` query tokens (``W_q F_T`` flattened over ``H x W`` in the paper's default).
        key: ``(B, N_k, d)`` key tokens (``W_k F_S'``).
        value: ``(B, N_k, C)`` value tokens (``W_v F_S'``).

    Returns:
        ``(B, N_q, C)``: one fused token per query position. No residual, no norm.

    Runs through :func:`torch.nn.functional.scaled_dot_product_attention` so memory grows as O(N * C), not O(N^2):
    at stride 8 of a detection image N is ~16.8k tokens, and a materialised attention matrix would take over 1 GB
    per image. PyTorch's fused (flash) kernels need equal query and value head sizes and a unit stride on the last
    dimension, and silently fall back to the O(N^2) math kernel otherwise. The paper has ``d = C/2``, so the
    values are attended in chunks of ``d`` channels (each chunk recomputes ``Q K^T``: the same arithmetic as
    zero-padding Q and K to ``C``, with less memory); the last chunk is zero-padded when ``d`` does not divide
    ``C``. ``d`` is first rounded up to a multiple of 8 by zero-padding Q and K (same ``Q K^T``; the kernels are
    several times slower at odd head sizes such as the 9 of 19-class logits). The softmax temperature is
    ``1/sqrt(d)`` with the paper's ``d``.
    """
    if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
        raise ValueError("query, key and value must be token tensors (B, N, channels)")
    d = query.shape[-1]
    if key.shape[-1] != d:
        raise ValueError(f"query and key must have the same channels, got {d} and {key.shape[-1]}")
    # Head size rounded up to a multiple of 8: the fused kernels are much slower at odd sizes (C = 19 logits give
    # d = 9). Zero columns appended to Q and K leave Q K^T, hence the result, unchanged.
    head = -(-d // 8) * 8
    q, k = query.unsqueeze(1), key.unsqueeze(1)  # one head: (B, 1, N, d)
    if head != d:
        q, k = F.pad(q, (0, head - d)), F.pad(k, (0, head - d))
    chunks = []
    # split (not slicing): its backward is one cat, where each slice's backward would allocate a full-size zero grad
    for chunk in value.split(head, dim=-1):
        width = chunk.shape[-1]
        if width < head:
            chunk = F.pad(chunk, (0, head - width))
        attended = F.scaled_dot_product_attention(q, k, chunk.unsqueeze(1), dropout_p=0.0, scale=d**-0.5)
        chunks.append(attended if width == head else attended[..., :width])
    fused = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=-1)
    return fused.squeeze(1)


# --------------------------------------------------------------------------------------------------------------
# ASCM: adaptive spatial-channel masking (selection units)
# --------------------------------------------------------------------------------------------------------------
#: How the selection units' scores become masks: ``"sigmoid"`` = the paper's (each mask in (0, 1) on its own; the
#: masks can all shrink together); ``"softmax"`` = ours: a softmax across the ``M`` masks, at each position for the
#: spatial masks and for each channel for the channel masks, so the masks partition the map (the channels): they sum
#: to 1 everywhere and cannot all vanish ("each mask corresponding to one semantic category", paper Sec. 3.3).
MASK_ACTIVATIONS = ("sigmoid", "softmax")


def activate_masks(scores: Tensor, activation: str) -> Tensor:
    """``scores`` ``(B, M, ...)`` -> masks: elementwise sigmoid, or softmax over the mask dimension ``M``."""
    if activation == "sigmoid":
        return torch.sigmoid(scores)
    if activation == "softmax":
        return torch.softmax(scores, dim=1)
    require_choice("mask_activation", activation, MASK_ACTIVATIONS)
    raise AssertionError("unreachable: every activation is handled above")


def channel_selection(fused: Tensor, channel_units: Tensor, activation: str = "sigmoid") -> Tensor:
    """Channel masks ``M^c = sigma(m_c v^T)`` with ``v = GAP(F_fused)``.

    Args:
        fused: ``(B, C, H, W)`` fused feature.
        channel_units: ``(M, 1)`` learnable ``m_c``.
        activation: ``"sigmoid"`` (the paper's) or ``"softmax"`` across the ``M`` masks for each channel
            (:data:`MASK_ACTIVATIONS`).

    Returns:
        ``(B, M, C)`` masks in (0, 1); with the sigmoid, entry ``[b, m, k] = sigma(m_c[m] * v_b[k])`` (the paper's
        literal outer product; each mask is monotone in ``v_k``, so sigmoid channel masks cannot partition the
        channels); with the softmax, ``exp(m_c[m] v_b[k]) / sum_j exp(m_c[j] v_b[k])``.
    """
    return channel_masks_from_pooled(fused.mean(dim=(2, 3)), channel_units, activation)


def channel_masks_from_pooled(pooled: Tensor, channel_units: Tensor, activation: str = "sigmoid") -> Tensor:
    """:func:`channel_selection` from ``v = GAP(F_fused)`` ``(B, C)`` itself -> ``(B, M, C)``."""
    return activate_masks(channel_units.view(1, -1, 1) * pooled.unsqueeze(1), activation)


def spatial_selection(fused: Tensor, spatial_units: Tensor, activation: str = "sigmoid") -> Tensor:
    """Spatial masks ``M^s = sigma(m_s z)`` with ``z = F_fused`` flattened to ``C x HW``.

    Args:
        fused: ``(B, C, H, W)`` fused feature.
        spatial_units: ``(M, C)`` learnable ``m_s`` ("receptive tokens").
        activation: ``"sigmoid"`` (the paper's) or ``"softmax"`` across the ``M`` masks at each position.

    Returns:
        ``(B, M, H, W)`` masks in (0, 1) (with the softmax they sum to 1 over ``M`` at every position).
    """
    return activate_masks(torch.einsum("mc,bchw->bmhw", spatial_units, fused), activation)


# --------------------------------------------------------------------------------------------------------------
# Masked imitation losses
# --------------------------------------------------------------------------------------------------------------
#: Denominators of ``L_c`` / ``L_s``: ``"sum"`` = the paper's ``sum M`` (linear in the mask, so shrinking every mask
#: lowers the loss: the masks collapse towards 0, docs/results.md); ``"sum_sq"`` = ``sum M^2`` (a mask-weighted mean
#: of the squared error, unchanged by the masks' scale).
MASK_NORMALIZERS = ("sum", "sum_sq")


def _check_normalizer(normalizer: str) -> None:
    require_choice("mask_normalizer", normalizer, MASK_NORMALIZERS)


def channel_masked_loss(
    teacher: Tensor | None,
    student: Tensor | None,
    channel_masks: Tensor,
    eps: float = 1e-6,
    normalizer: str = "sum",
    error_sums: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Channel loss ``L_c = 1/M sum_m ||M^c_m (.) D||^2 / (H W sum_k M^c_{m,k} + eps)``, ``D = F_T - F_S'``.

    Args:
        teacher: ``(B, C, H, W)`` teacher feature ``F_T``.
        student: ``(B, C, H, W)`` aligned student feature ``F_S'``.
        channel_masks: ``(B, M, C)``; each mask is broadcast over ``H, W`` and multiplies ``D`` before squaring.
        eps: keeps the normaliser positive when a mask is all but zero.
        normalizer: ``"sum"`` (the paper's ``sum_k M``) or ``"sum_sq"`` (``sum_k M^2``), see :data:`MASK_NORMALIZERS`.
        error_sums: :func:`squared_error_sums` of ``D`` when the caller has them already (L_c and L_s share
            them); ``teacher`` and ``student`` may then be None.

    Returns:
        Scalar: mean over masks and batch. With every mask equal to 1 this is the plain mean-squared error.
    """
    squared_error_per_channel, squared_error_per_position = _error_sums(teacher, student, error_sums)  # (B, C), (B, H, W)
    height, width = squared_error_per_position.shape[-2:]
    return masked_error_ratio(channel_masks, squared_error_per_channel, height * width, eps, normalizer)


def spatial_masked_loss(
    teacher: Tensor | None,
    student: Tensor | None,
    spatial_masks: Tensor,
    eps: float = 1e-6,
    normalizer: str = "sum",
    error_sums: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Spatial loss ``L_s = 1/M sum_m ||M^s_m (.) D||^2 / (C sum_p M^s_{m,p} + eps)``, ``D = F_T - F_S'``.

    Args:
        teacher: ``(B, C, H, W)`` teacher feature ``F_T``.
        student: ``(B, C, H, W)`` aligned student feature ``F_S'``.
        spatial_masks: ``(B, M, H, W)``; each mask is broadcast over ``C`` and multiplies ``D`` before squaring.
        eps: keeps the normaliser positive when a mask is all but zero.
        normalizer: ``"sum"`` (the paper's ``sum_p M``) or ``"sum_sq"`` (``sum_p M^2``), see :data:`MASK_NORMALIZERS`.
        error_sums: :func:`squared_error_sums` of ``D`` when the caller has them already (L_c and L_s share
            them); ``teacher`` and ``student`` may then be None.

    Returns:
        Scalar: mean over masks and batch. With every mask equal to 1 this is the plain mean-squared error.
    """
    squared_error_per_channel, squared_error_per_position = _error_sums(teacher, student, error_sums)  # (B, C), (B, H, W)
    channels = squared_error_per_channel.shape[1]
    return masked_error_ratio(
        spatial_masks.flatten(2), squared_error_per_position.flatten(1), channels, eps, normalizer
    )


class _MaskedErrorRatio(torch.autograd.Function):
    """:func:`masked_error_ratio` with a hand-written backward: on the small maps of a CPU step the ~15 autograd
    nodes of the plain expression (two of them batched matrix products with a unit dimension, slow on CPU) cost
    more than the arithmetic; here the backward is five elementwise ops and one product. Checked against the plain
    expression under autograd by ``gradcheck`` in the tests."""

    @staticmethod
    def forward(ctx, masks: Tensor, errors: Tensor, extent: float, eps: float, normalizer: str) -> Tensor:
        squared_masks = masks.square()  # (B, M, L)
        numerator = (squared_masks * errors.unsqueeze(1)).sum(dim=2)  # (B, M)
        weights = masks if normalizer == "sum" else squared_masks
        denominator = weights.sum(dim=2).mul_(extent).add_(eps)  # (B, M)
        ratio = numerator / denominator
        ctx.save_for_backward(masks, errors, ratio, denominator)
        ctx.extent, ctx.normalizer = extent, normalizer
        return ratio.mean()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        masks, errors, ratio, denominator = ctx.saved_tensors
        # L = c sum_{b,m} N_bm / D_bm with c = 1 / (B M), N = sum_l M^2 e, D = K sum_l w(M) + eps:
        #   dL/dM = c (2 M e / D - K (N / D^2) w'(M)),   w' = 1 (sum) or 2 M (sum_sq)
        #   dL/de = c sum_m M^2 / D
        scale = grad_output / ratio.numel()  # c times the incoming gradient
        inverse = scale / denominator  # (B, M)
        grad_masks = grad_errors = None
        if ctx.needs_input_grad[0]:
            shrink = (ratio * inverse * ctx.extent).unsqueeze(2)  # c K N / D^2: (B, M, 1)
            grad_masks = errors.unsqueeze(1) * (2 * inverse).unsqueeze(2)  # (B, M, L)
            if ctx.normalizer == "sum":
                grad_masks = grad_masks.mul_(masks).sub_(shrink)
            else:
                grad_masks = grad_masks.sub_(2 * shrink).mul_(masks)
        if ctx.needs_input_grad[1]:
            grad_errors = torch.bmm(inverse.unsqueeze(1), masks.square()).squeeze(1)  # (B, L)
        return grad_masks, grad_errors, None, None, None


def masked_error_ratio(masks: Tensor, errors: Tensor, extent: float, eps: float = 1e-6, normalizer: str = "sum") -> Tensor:
    """``1/(B M) sum_{b,m} (sum_l M_{bml}^2 e_{bl}) / (K sum_l w(M_{bml}) + eps)``: the form shared by ``L_c`` and
    ``L_s``, with ``w(M) = M`` (the paper's) or ``M^2`` (``normalizer="sum_sq"``).

    Args:
        masks: ``(B, M, L)`` masks (``L = C`` channel masks, ``L = HW`` spatial masks).
        errors: ``(B, L)`` the squared error summed over the masks' broadcast dimension (``e_c = sum_{h,w} D^2`` for
            channel masks, ``e_p = sum_c D^2`` for spatial ones).
        extent: ``K``, the size of that broadcast dimension (``HW`` for channel masks, ``C`` for spatial ones).
    """
    _check_normalizer(normalizer)
    return _MaskedErrorRatio.apply(masks, errors, float(extent), float(eps), normalizer)


class _SquaredErrorSums(torch.autograd.Function):
    """``sum_{h,w} D^2`` ``(B, C)`` and ``sum_c D^2`` ``(B, H, W)`` of ``D`` ``(B, C, H, W)``, with a hand-written
    backward: autograd would hold the broadcast gradient ``g_c + g_p``, ``2 D`` and their product at once (four full
    maps with ``D``, the step's peak at a paper-scale level); here ``2 D g_c + 2 D g_p`` is formed in one buffer
    (``addcmul_`` in place), two maps with ``D``. Checked against autograd by ``gradcheck`` in the tests."""

    @staticmethod
    def forward(ctx, difference: Tensor) -> tuple[Tensor, Tensor]:
        squared = difference.square()
        ctx.save_for_backward(difference)
        return squared.sum(dim=(2, 3)), squared.sum(dim=1)

    @staticmethod
    def backward(ctx, grad_per_channel: Tensor, grad_per_position: Tensor) -> Tensor:
        (difference,) = ctx.saved_tensors
        grad = difference * (2 * grad_per_channel)[:, :, None, None]
        return grad.addcmul_(difference, (2 * grad_per_position).unsqueeze(1))


def squared_error_sums(difference: Tensor) -> tuple[Tensor, Tensor]:
    """``(sum_{h,w} D^2, sum_c D^2)``: ``(B, C)`` per channel and ``(B, H, W)`` per position, for ``D`` ``(B, C, H, W)``
    (either sign: ``F_T - F_S'`` or ``F_S' - F_T``); what ``L_c`` and ``L_s`` weight by their masks."""
    return _SquaredErrorSums.apply(difference)


def _error_sums(
    teacher: Tensor | None, student: Tensor | None, error_sums: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, Tensor]:
    if error_sums is not None:
        return error_sums
    check_pair(teacher, student)
    return squared_error_sums(teacher - student)


def dice_diversity(masks: Tensor, eps: float = 1e-12) -> Tensor:
    """Diversity loss: mean pairwise Dice ``2 <M_i, M_j> / (||M_i||^2 + ||M_j||^2 + eps)`` over ``i != j``.

    Args:
        masks: ``(B, M, L)`` masks, each flattened to length ``L`` (``HW`` for spatial masks, ``C`` for channel
            masks).
        eps: keeps the ratio finite for all-zero masks.

    Returns:
        Scalar in [0, 1]: averaged over the ``M (M - 1)`` ordered pairs and the batch; 0 when ``M == 1`` (no pair).
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be (B, M, L), got shape {tuple(masks.shape)}")
    num_masks = masks.shape[1]
    if num_masks < 2:
        return masks.sum() * 0.0  # keeps the graph and device; there is no pair to compare
    return _DiceDiversity.apply(masks, float(eps))


class _DiceDiversity(torch.autograd.Function):
    """:func:`dice_diversity` with a hand-written backward (one batched product instead of autograd's ~15 nodes,
    two of them products; see :class:`_MaskedErrorRatio`). Checked against the plain expression by ``gradcheck``.

    With ``G = M M^T``, ``n = diag(G)``, ``S_ij = n_i + n_j + eps`` and ``c = 1 / (B M (M - 1))``, the loss is
    ``c sum_b sum_{i != j} 2 G_ij / S_ij``; its gradient with respect to ``G`` (``G_kk = n_k``) is the symmetric
    ``W``: ``W_ij = 2 c / S_ij`` off the diagonal and ``W_kk = -4 c sum_{j != k} G_kj / S_kj^2``; then
    ``dL/dM = (W + W^T) M = 2 W M``.
    """

    @staticmethod
    def forward(ctx, masks: Tensor, eps: float) -> Tensor:
        batch, num_masks = masks.shape[:2]
        gram = masks @ masks.transpose(1, 2)  # (B, M, M): <M_i, M_j>
        squared_norms = torch.diagonal(gram, dim1=1, dim2=2)  # (B, M)
        sums = squared_norms.unsqueeze(2) + squared_norms.unsqueeze(1) + eps  # S: (B, M, M)
        off_diagonal = ~torch.eye(num_masks, dtype=torch.bool, device=masks.device)
        ratio = (gram / sums).mul_(off_diagonal)  # G_ij / S_ij, 0 on the diagonal
        ctx.save_for_backward(masks, ratio, sums)
        ctx.scale = 1.0 / (batch * num_masks * (num_masks - 1))
        return ratio.sum().mul_(2 * ctx.scale)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        masks, ratio, sums = ctx.saved_tensors
        scale = grad_output * ctx.scale
        weights = (2 * scale) / sums  # W off the diagonal: (B, M, M)
        # the diagonal: ratio is 0 there, so the sum over all j is the sum over j != k
        weights.diagonal(dim1=1, dim2=2).copy_((ratio / sums).sum(dim=2).mul_(-4 * scale))
        return 2 * (weights @ masks), None


# --------------------------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------------------------
def feature_mse(teacher: Tensor, student: Tensor) -> Tensor:
    """FitNet-style imitation (the paper's "no mask" row): ``mean((F_T - F_S')^2)`` over all elements.

    Args:
        teacher, student: ``(B, C, H, W)``.
    """
    check_pair(teacher, student)
    return F.mse_loss(student, teacher)


#: Over what :func:`channel_standardize` takes each channel's statistics: ``"batch"`` = over the batch and the
#: positions (PKD's, as BatchNorm: the update then depends on how the batch is split across devices and accumulation
#: steps); ``"image"`` = over each image's positions alone (as InstanceNorm: batch-independent).
STANDARDIZE_OVER = ("batch", "image")


def channel_standardize(feature: Tensor, eps: float = 1e-6, over: str = "batch") -> Tensor:
    """Per-channel standardisation: ``F_hat = (F - mean_c) / sqrt(var_c + eps^2)``.

    Args:
        feature: ``(B, C, H, W)``.
        eps: guards channels with no variance (mmrazor's ``PKDLoss`` adds its 1e-6 to the std, ``/ (std + eps)``:
            the two differ by less than ``eps / std`` relative, e.g. 1e-5 at std 0.1).
        over: ``"batch"``: statistics over ``(B, H, W)`` (PKD's); ``"image"``: over ``(H, W)`` of each image
            (:data:`STANDARDIZE_OVER`).

    Returns:
        ``(B, C, H, W)``: each channel (of each image, with ``over="image"``) with mean 0 and (unbiased,
        Bessel-corrected, as ``torch.std``) standard deviation ~1. A ``ValueError`` when fewer than 2 values enter
        a statistic (``B H W`` or ``H W``).

    Computed by :func:`torch.nn.functional.batch_norm` / ``instance_norm`` (no affine, input statistics): one fused
    kernel for the statistics and the normalisation, forward and backward, faster on CPU than ``mean``/``std``
    (docs/results.md, "Fusion cost"). They divide by ``sqrt(var_biased + eps_bn)``; with
    ``eps_bn = eps^2 (n - 1) / n`` and the result scaled by ``sqrt((n - 1) / n)`` (``n`` values per statistic)
    that is exactly ``sqrt(var_unbiased + eps^2)``.
    """
    require_choice("standardize_over", over, STANDARDIZE_OVER)
    count = feature.numel() // feature.shape[1] if over == "batch" else feature.shape[-2] * feature.shape[-1]
    if count < 2:
        where = "batch x positions" if over == "batch" else "positions of one image"
        raise ValueError(
            f"per-channel standardisation needs at least 2 values per channel ({where}), got a feature of "
            f"shape {tuple(feature.shape)}: use a batch of 2 or more, or a point with a larger map"
        )
    correction = (count - 1) / count
    scale = feature.new_full((feature.shape[1],), correction**0.5)  # the norm's weight: scaled in the same kernel
    eps_norm = max(eps**2 * correction, 1e-30)
    if over == "image":
        return F.instance_norm(feature, weight=scale, use_input_stats=True, eps=eps_norm)
    return F.batch_norm(feature, None, None, weight=scale, training=True, eps=eps_norm)


def pearson_distillation(teacher: Tensor, student: Tensor, eps: float = 1e-6) -> Tensor:
    """PKD (Cao et al., NeurIPS 2022): ``mean((F_hat_S - F_hat_T)^2) / 2`` of the per-channel standardised features
    (:func:`channel_standardize`), i.e. about ``1 - r`` with ``r`` the Pearson correlation of each channel, averaged:
    the imitation no longer depends on the features' scale. mmrazor's ``PKDLoss`` without the loss weight.

    Args:
        teacher, student: ``(B, C, H, W)`` (the student aligned to the teacher first).
    """
    check_pair(teacher, student)
    return F.mse_loss(channel_standardize(student, eps), channel_standardize(teacher, eps)) / 2


def channel_wise_distillation(teacher: Tensor, student: Tensor, tau: float = 1.0) -> Tensor:
    """CWD (Shu et al., 2021): per channel, a spatial softmax at temperature ``tau``; ``tau^2 KL(p_T || p_S)``.

    Args:
        teacher, student: ``(B, C, H, W)``.
        tau: softmax temperature (mmrazor uses 1, common segmentation forks 4).

    Returns:
        Scalar: the KL summed over positions, averaged over channels and the batch, times ``tau^2``.
    """
    check_pair(teacher, student)
    batch, channels = teacher.shape[:2]
    teacher_logp = F.log_softmax(teacher.flatten(2) / tau, dim=2)
    student_logp = F.log_softmax(student.flatten(2) / tau, dim=2)
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum()
    return kl * tau**2 / (batch * channels)


def channel_wise_kl(teacher: Tensor, student: Tensor, tau: float = 1.0, log_position_weights: Tensor | None = None) -> Tensor:
    """CWD's per-channel divergence ``tau^2 KL(p_T || p_S)`` ``(B, C)``, with ``p = softmax_HW(F / tau + log w)``.

    Args:
        teacher, student: ``(B, C, H, W)``.
        tau: softmax temperature.
        log_position_weights: ``(B, H, W)`` ``log w`` or None (``w = 1``). Adding ``log w`` to every channel's scores
            reweights both distributions by the same positive ``w`` and renormalises: the KL between the two
            distributions *restricted to what the mask weights*, still >= 0 and 0 exactly when the student's
            distribution equals the teacher's there (the masked distribution imitation of ``--imitation_form
            distribution``). With ``w = 1`` the mean over ``(B, C)`` is :func:`channel_wise_distillation`.
    """
    check_pair(teacher, student)
    teacher_scores, student_scores = teacher.flatten(2) / tau, student.flatten(2) / tau  # (B, C, HW)
    if log_position_weights is not None:
        shift = log_position_weights.flatten(1).unsqueeze(1)  # (B, 1, HW)
        teacher_scores, student_scores = teacher_scores + shift, student_scores + shift
    teacher_logp = F.log_softmax(teacher_scores, dim=2)
    student_logp = F.log_softmax(student_scores, dim=2)
    return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(dim=2) * tau**2


def mgd_random_mask(
    batch: int,
    height: int,
    width: int,
    mask_ratio: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """MGD's random spatial mask (Yang et al., 2022): each position is dropped (0) with probability ``mask_ratio``.

    Returns:
        ``(B, 1, H, W)`` of zeros and ones, to multiply the aligned student feature before the generator.
    """
    uniform = torch.rand(batch, 1, height, width, device=device, generator=generator)
    return (uniform >= mask_ratio).to(dtype)


def masked_generative_loss(teacher: Tensor, generated: Tensor) -> Tensor:
    """MGD's objective: ``sum((G(M (.) F_S') - F_T)^2) / B`` (squared error summed over C, H, W, mean over batch).

    Args:
        teacher: ``(B, C, H, W)`` teacher feature.
        generated: ``(B, C, H, W)`` the generator's output from the masked, aligned student feature.
    """
    check_pair(teacher, generated)
    return (generated - teacher).pow(2).sum() / teacher.shape[0]


def check_pair(teacher: Tensor, student: Tensor) -> None:
    if teacher.shape != student.shape:
        raise ValueError(
            f"teacher and (aligned) student features must have the same shape, got teacher "
            f"{tuple(teacher.shape)} and student {tuple(student.shape)}; align the student first "
            f"(acamkd_hf.alignment.StudentAligner)"
        )
