"""What trains ACAM-KD's selection units: the mask objectives, as pure functions.

The paper trains the masks by the total loss, i.e. by the very imitation they weight (``imitation``). That has only
trivial optima: with the sum-M normaliser the masks shrink (the imitation falls with their size), with sum-M^2 they
slide to the positions where the student already matches (docs/results.md, "Masks that matter"). No public method
with learned masks trains them that way (the method spec, "How methods with learned masks keep them from
collapsing"). The other objectives keep what makes ACAM-KD itself (masks computed every step from the fused
student-teacher feature, so they follow the student) and cut the imitation's gradient out of the masks:

* ``adversarial`` (CTKD's gradient reversal with a ramp, ADIOS's fixed mask budget): the masks *maximise* the
  masked (log) imitation error, kept spread by a KL-to-uniform term and the Dice term; the student minimises the
  imitation with the masks detached. Optimum: weight proportional to ``e^(1 / beta)``, where the student lags.
* ``predictive`` (HPM): the selection units regress the student's per-image standardised error (a detached target
  that moves with the student and cannot be gamed); the imitation uses their masks detached.
* ``task`` (MasKD's stage 1, online, at class scores only): the masks learn to keep the frozen teacher's prediction
  from the masked teacher output; the imitation uses them detached.
* ``uniform``: the control: every mask a constant 1, no fusion and no selection units (the paper's "no mask" row
  under the same imitation).

The three learned objectives use **budgeted masks**: each mask is ``L softmax(scores / 1)`` over its ``L`` positions
(spatial) or channels (channel masks), so its weights sum to ``L`` (mean 1): a mask cannot shrink, only
concentrate. The imitation weights ``omega = (1 - gamma) + gamma mean_m(w_m)`` (a floor of uniform weight, mixing
``gamma``: a guard against weight on unlearnable teacher noise, as HPM mixes random with hard patches).

Shapes: ``B`` batch, ``M`` masks, ``L`` positions (``HW``) or channels (``C``), ``K`` classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: ``--mask_objective`` values (see the module docstring).
MASK_OBJECTIVES = ("imitation", "adversarial", "predictive", "task", "uniform")
#: The objectives whose masks are budgeted and detached from the imitation.
BUDGETED_OBJECTIVES = ("adversarial", "predictive", "task")
#: ``--imitation_form``: what the masks weight. ``squared_error`` = the paper's ``||M (.) D||^2`` terms;
#: ``distribution`` = CWD's per-channel spatial KL under the masks (ours; needs a budgeted or uniform objective).
IMITATION_FORMS = ("squared_error", "distribution")


#: The budgeted masks' softmax temperature: ``w = L softmax(u / T)``. Adam moves each selection unit by about the
#: learning rate per step whatever the scale, so the temperature sets how fast a mask can sharpen (at ``T = 1`` too
#: slowly for the masks to leave uniform early in a short run); ``T = 0.1`` is the same as ten times the units'
#: learning rate and init.
BUDGET_TEMPERATURE = 0.1


def budget_masks(scores: Tensor) -> Tensor:
    """``(B, M, L)`` selection scores ``u`` (before the temperature) -> budgeted masks ``L softmax_l(u / T)``
    (:data:`BUDGET_TEMPERATURE`): each row sums to ``L`` (mean 1)."""
    return torch.softmax(scores / BUDGET_TEMPERATURE, dim=-1) * scores.shape[-1]


def imitation_weights(masks: Tensor, uniform_mix: float) -> Tensor:
    """``omega = (1 - gamma) + gamma mean_m(w_m)`` ``(B, L)`` from budgeted masks ``(B, M, L)``, detached: what the
    imitation weights each position / channel with (mean 1; ``gamma = 0`` is uniform weighting)."""
    return masks.detach().mean(dim=1).mul(uniform_mix).add_(1.0 - uniform_mix)


def weighted_error_mean(weights: Tensor, errors: Tensor, extent: int) -> Tensor:
    """``sum_{b,l} omega_bl e_bl / (B L K)``: the mean squared error with each position (channel) weighted.

    Args:
        weights: ``(B, L)`` imitation weights (mean 1: ``omega = 1`` gives the plain mean squared error).
        errors: ``(B, L)`` the squared error summed over the broadcast dimension (``sum_c D^2`` per position, or
            ``sum_{h,w} D^2`` per channel).
        extent: ``K``, the size of that broadcast dimension (``C`` or ``HW``).
    """
    return (weights * errors).sum() / (errors.numel() * extent)


def relative_errors(errors: Tensor) -> Tensor:
    """``e_bl / mean_l(e_bl)`` ``(B, L)``, detached: each image's errors in units of its mean (scale-free)."""
    errors = errors.detach()
    return errors / errors.mean(dim=1, keepdim=True).clamp_min(1e-12)


def adversarial_mask_objective(scores: Tensor, errors: Tensor, entropy_weight: float, strength: float) -> Tensor:
    """What the selection units minimise under ``adversarial`` (without the Dice term):

    ``- s * 1/(B M) sum_{b,m} sum_l q_bml log e~_bl + beta * 1/(B M) sum_{b,m} KL(q_bm || U)``

    with ``q = softmax_l(scores / T)`` (a budgeted mask over ``L``), ``e~`` the relative errors
    (:func:`relative_errors`, detached, floored at 1e-6), ``U`` uniform over ``L`` (``KL = sum_l q log q + log L``)
    and ``s`` the reversal strength (ramped from 0 to 1). For fixed errors the minimiser is
    ``q proportional to e~^(s / beta)``: at ``beta = 1`` each position's weight is proportional to the student's error
    there. The log is what keeps it spread: maximising the error itself (``sum_l q e~``) has the minimiser
    ``exp(e~ / beta)``, which put all the weight on one or two positions of a toy map whose errors are skewed, a
    collapse onto outliers.

    Args:
        scores: ``(B, M, L)`` the selection units' scores (with their graph).
        errors: ``(B, L)`` squared errors per position or channel.
        entropy_weight: ``beta``; strength: ``s``.
    """
    log_q = torch.log_softmax(scores / BUDGET_TEMPERATURE, dim=-1)
    q = log_q.exp()
    gain = torch.einsum("bml,bl->bm", q, relative_errors(errors).clamp_min(1e-6).log()).mean()
    kl_to_uniform = ((q * log_q).sum(dim=-1) + math.log(scores.shape[-1])).mean()
    return -strength * gain + entropy_weight * kl_to_uniform


def standardized_targets(errors: Tensor) -> Tensor:
    """``(e_bl - mean_l e_bl) / std_l(e_bl)`` ``(B, L)``, detached (per image, as HPM standardises its targets)."""
    errors = errors.detach()
    centred = errors - errors.mean(dim=1, keepdim=True)
    return centred / centred.std(dim=1, keepdim=True).clamp_min(1e-12)


def predictive_mask_objective(scores: Tensor, errors: Tensor) -> Tensor:
    """What the selection units minimise under ``predictive`` (without the Dice term):

    ``1/(B M L) sum_{b,m,l} (s_bml - mean_l s_bml - t_bl)^2``, ``s = u / T`` the tempered scores, ``t`` =
    :func:`standardized_targets` of the errors.

    Each mask's centred scores regress the student's standardised error (the softmax ignores the scores' mean), so
    its budgeted mask is ``proportional to exp(t)``: about ``e^2 = 7.4`` times the weight two standard deviations
    above an image's mean error.
    """
    tempered = scores / BUDGET_TEMPERATURE
    centred = tempered - tempered.mean(dim=-1, keepdim=True)
    return (centred - standardized_targets(errors).unsqueeze(1)).square().mean()


def task_mask_objective(teacher_logits: Tensor, spatial_masks: Tensor | None, channel_masks: Tensor | None) -> Tensor:
    """What the selection units minimise under ``task`` (without the Dice term): the cross-entropy of the masked
    teacher scores against the teacher's own prediction ``y = argmax_k F_T``,

    ``1/M sum_m CE(F_T (.) M^s_m, y) + 1/M sum_m CE(F_T (.) M^c_m, y)`` (each mask broadcast over the other
    dimension; CE averaged over the batch and positions).

    Budgeted masks scale the teacher's scores by a mean of 1: an all-uniform mask keeps the teacher's own
    cross-entropy; a mask that drops a region makes the teacher uncertain there, so weight goes where the teacher's
    decision needs it (MasKD's stage-1 objective, recomputed every step from the fused feature).

    Args:
        teacher_logits: ``(B, K, H, W)`` the teacher's class scores (frozen).
        spatial_masks: ``(B, M, H, W)`` or None; channel_masks: ``(B, M, K)`` or None.
    """
    target = teacher_logits.detach().argmax(dim=1)  # (B, H, W)
    teacher = teacher_logits.detach().unsqueeze(1)  # (B, 1, K, H, W)
    loss = teacher_logits.new_zeros(())
    for masked in (
        teacher * spatial_masks.unsqueeze(2) if spatial_masks is not None else None,  # (B, M, K, H, W)
        teacher * channel_masks[..., None, None] if channel_masks is not None else None,
    ):
        if masked is not None:
            num_masks = masked.shape[1]
            loss = loss + F.cross_entropy(masked.flatten(0, 1), target.repeat_interleave(num_masks, dim=0))
    return loss


def ramp(step: int, ramp_steps: int) -> float:
    """The adversarial reversal strength at optimizer update ``step``: ``min(1, step / ramp_steps)`` (1 when the ramp
    length is 0)."""
    return 1.0 if ramp_steps <= 0 else min(1.0, step / ramp_steps)


__all__ = [
    "MASK_OBJECTIVES",
    "BUDGETED_OBJECTIVES",
    "IMITATION_FORMS",
    "BUDGET_TEMPERATURE",
    "budget_masks",
    "imitation_weights",
    "weighted_error_mean",
    "relative_errors",
    "adversarial_mask_objective",
    "standardized_targets",
    "predictive_mask_objective",
    "task_mask_objective",
    "ramp",
]
