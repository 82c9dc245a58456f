"""ACAM-KD at one distillation point: the fused student-teacher feature, the selection units' masks, the masked
imitation and what trains the masks (:mod:`acamkd_hf.mask_objectives`)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional as KD
from . import mask_objectives as MO
from .alignment import StudentAligner
from .choices import require_choice
from .fusion import StudentTeacherCrossAttention
from .mask_diagnostics import effective_support, rank_correlation
from .masking import AdaptiveSpatialChannelMasking
from .point_loss import PointDistillationLoss, float32_region, imitated_pair
from .settings import DETECTION_NUM_MASKS, check_imitation_form, check_mask_uniform_mix, method_defaults

#: what ``--method acamkd`` uses when no flag is given: the constructor's defaults below (one home: the settings)
_ACAMKD = method_defaults("acamkd")


def _imitation_error_sums(teacher: Tensor, aligned: Tensor, standardize: bool, over: str = "batch") -> tuple[Tensor, Tensor]:
    """:func:`~acamkd_hf.functional.squared_error_sums` of ``D`` in float32 between ``F_T`` and ``F_S'``, raw or
    each standardised per channel.

    Standardised, the student's map is a fresh tensor that nothing else reads (the norm's backward reads its input):
    ``F_hat_S' - F_hat_T`` is formed in it in place (the squares are the same either sign), so at most two full maps
    live at once; a paper-scale level's map is 8 MiB per image.
    """
    teacher32, aligned32 = teacher.float(), aligned.float()
    KD.check_pair(teacher32, aligned32)
    if not standardize:  # aligned32 may be the adapter's own output: no in-place here
        return KD.squared_error_sums(teacher32 - aligned32)
    return KD.squared_error_sums(
        KD.channel_standardize(aligned32, over=over).sub_(KD.channel_standardize(teacher32, over=over))
    )


class ACAMKDLoss(PointDistillationLoss):
    """ACAM-KD at one distillation point: ``alpha (L_c + L_s) + lambda L_div`` (+ the mask objective).

    ``F_S' = f_align(F_S)``; ``F_fused = STCA-FF(F_T, F_S')``; masks from ASCM(``F_fused``); ``L_c``, ``L_s`` the
    masked imitation losses of ``D = F_T - F_S'``; ``L_div`` the Dice diversity of the spatial plus the channel
    masks. What trains the masks is ``mask_objective`` (:mod:`acamkd_hf.mask_objectives`):

    * ``imitation`` (the paper's reading): the masks train from the total loss, the imitation they weight included;
      ``L_c = 1/M sum_m ||M^c_m (.) D||^2 / (HW N(M^c_m) + eps)``, ``L_s`` likewise, ``N`` the ``mask_normalizer``.
    * ``adversarial`` / ``predictive`` / ``task``: budgeted masks (each sums to its ``L``), detached in the
      imitation: ``L_s = sum_{b,p} omega^s_bp e_bp / (B HW C)`` with ``e_p = sum_c D^2`` and
      ``omega = (1 - gamma) + gamma mean_m(w_m)``; ``L_c`` likewise over channels. The selection units and the
      fusion minimise the objective's own loss + ``lambda L_div`` (reported as ``mask_objective``).
    * ``uniform``: the control: ``omega = 1`` (``L_c = L_s`` = the mean of ``D^2``), no fusion, no selection units.

    With ``imitation_form="distribution"`` (budgeted or uniform masks) the masks weight CWD's per-channel spatial
    KL instead of ``D^2``: ``L_s = 1/(B C) sum_{b,k} tau^2 KL(p_T || p_S)`` with
    ``p = softmax_HW(F_k / tau + log omega^s)`` and ``L_c = 1/(B C) sum_{b,k} omega^c_bk tau^2 KL_k`` (each the
    plain CWD at ``omega = 1``); the masks' objectives still read the standardised squared error.

    Every keyword's default is what ``--method acamkd`` uses (:func:`~acamkd_hf.settings.method_defaults`: the
    recommended variant); ``ACAMKDLoss(C_s, C_t, **ACAMKD_VARIANTS["paper"])`` is the paper's literal form.

    Args:
        student_channels, teacher_channels: ``C_s``, ``C_t``.
        num_masks: ``M`` (paper: 6 for detection, number of classes for segmentation).
        alpha: weight of the imitation terms.
        lambda_div: weight of the diversity term.
        eps: normaliser guard of ``L_c`` and ``L_s``.
        fusion_mode: see :data:`acamkd_hf.fusion.FUSION_MODES` (Tables 9 and 10 ablations).
        mask_kinds: see :data:`acamkd_hf.masking.MASK_KINDS` (Table 8 ablation).
        detach_student_in_fusion: the gradient choice documented in the spec.
        alignment: see :data:`acamkd_hf.alignment.ALIGNMENT_KINDS`.
        detach_masks_in_imitation: (``imitation`` objective) stop the imitation terms' gradient into the masks (the
            selection units and the fusion then learn from the Dice term only); the spec trains them from the total
            loss. With that literal reading ``L_c``, ``L_s`` scale linearly with the masks, so they
            can fall by shrinking every mask towards 0; ``spatial_mask_mean`` / ``channel_mask_mean`` show it.
        fusion_kv_reduction, fusion_max_kv_tokens: STCA-FF's key/value sequence reduction (see
            :mod:`acamkd_hf.fusion`; 1 = the paper's exact fusion).
        mask_activation: (``imitation`` objective) ``"sigmoid"`` (the paper's) or ``"softmax"`` across the masks.
        imitation_standardize: compare per-channel standardised features (:func:`acamkd_hf.functional.channel_standardize`,
            PKD's normalisation) instead of raw ones; the masks and the fusion still see the raw features.
        standardize_over: the standardisation's statistics: over the ``"batch"`` or each ``"image"``.
        mask_normalizer: (``imitation`` objective) denominators of ``L_c`` / ``L_s``: ``"sum"`` (the paper's) or
            ``"sum_sq"`` (scale-invariant). See :data:`acamkd_hf.functional.MASK_NORMALIZERS`.
        mask_objective: see :data:`acamkd_hf.mask_objectives.MASK_OBJECTIVES`.
        imitation_form: see :data:`acamkd_hf.mask_objectives.IMITATION_FORMS`.
        mask_entropy_weight: ``beta`` of the adversarial objective's KL-to-uniform term.
        mask_uniform_mix: ``gamma``, the learned masks' share of the imitation weights (the rest uniform).
        mask_ramp_steps: optimizer updates over which the adversarial reversal strength ramps from 0 to 1. The
            count is the ``mask_steps`` buffer: :class:`~acamkd_hf.trainer.DistillationTrainer` sets it to
            ``state.global_step`` before each forward (so the micro-batches of one accumulated update share it);
            in a loop of your own it counts training forward passes.
        cwd_tau: the distribution form's temperature.

    Forward returns ``{"loss", "channel", "spatial", ...}``: with masks also ``"diversity"``, per kind
    ``"<kind>_diversity"`` (Dice, 1 = all masks alike), ``"<kind>_mask_mean"``, ``"<kind>_mask_support"``
    (:func:`~acamkd_hf.mask_diagnostics.effective_support`) and ``"spatial_error_rank_corr"`` (Spearman between the
    spatial weight and the per-position error, :func:`~acamkd_hf.mask_diagnostics.rank_correlation`); with a learned
    objective ``"mask_objective"``. Diagnostics are not part of the loss. :meth:`masks` returns the masks of a
    batch without the losses.
    """

    SETTINGS = {
        "num_masks": "num_masks", "alpha": "alpha", "lambda_div": "lambda_div", "eps": "distillation_eps",
        "fusion_mode": "fusion_mode", "mask_kinds": "mask_kinds", "detach_student_in_fusion":
        "detach_student_in_fusion", "alignment": "alignment", "detach_masks_in_imitation":
        "detach_masks_in_imitation", "mask_normalizer": "mask_normalizer", "fusion_kv_reduction":
        "fusion_kv_reduction", "fusion_max_kv_tokens": "fusion_max_kv_tokens", "mask_activation": "mask_activation",
        "imitation_standardize": "imitation_standardize", "standardize_over": "standardize_over", "mask_objective":
        "mask_objective", "imitation_form": "imitation_form", "mask_entropy_weight": "mask_entropy_weight",
        "mask_uniform_mix": "mask_uniform_mix", "mask_ramp_steps": "mask_ramp_steps", "cwd_tau": "cwd_tau",
    }

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        *,
        num_masks: int = DETECTION_NUM_MASKS,
        alpha: float = _ACAMKD.alpha,
        lambda_div: float = _ACAMKD.lambda_div,
        eps: float = _ACAMKD.distillation_eps,
        fusion_mode: str = _ACAMKD.fusion_mode,
        mask_kinds: str = _ACAMKD.mask_kinds,
        detach_student_in_fusion: bool = _ACAMKD.detach_student_in_fusion,
        alignment: str = _ACAMKD.alignment,
        detach_masks_in_imitation: bool = _ACAMKD.detach_masks_in_imitation,
        mask_normalizer: str = _ACAMKD.mask_normalizer,
        fusion_kv_reduction: int | str = _ACAMKD.fusion_kv_reduction,
        fusion_max_kv_tokens: int = _ACAMKD.fusion_max_kv_tokens,
        mask_activation: str = _ACAMKD.mask_activation,
        imitation_standardize: bool = _ACAMKD.imitation_standardize,
        standardize_over: str = _ACAMKD.standardize_over,
        mask_objective: str = _ACAMKD.mask_objective,
        imitation_form: str = _ACAMKD.imitation_form,
        mask_entropy_weight: float = _ACAMKD.mask_entropy_weight,
        mask_uniform_mix: float = _ACAMKD.mask_uniform_mix,
        mask_ramp_steps: int = _ACAMKD.mask_ramp_steps,
        cwd_tau: float = _ACAMKD.cwd_tau,
    ) -> None:
        super().__init__()
        require_choice("mask_normalizer", mask_normalizer, KD.MASK_NORMALIZERS)
        require_choice("mask_objective", mask_objective, MO.MASK_OBJECTIVES)
        require_choice("imitation_form", imitation_form, MO.IMITATION_FORMS)
        require_choice("standardize_over", standardize_over, KD.STANDARDIZE_OVER)
        check_imitation_form(imitation_form, mask_objective)
        check_mask_uniform_mix(mask_uniform_mix)
        self.imitation_standardize = imitation_standardize
        self.standardize_over = standardize_over
        self.mask_normalizer = mask_normalizer
        self.alpha = alpha
        self.lambda_div = lambda_div
        self.eps = eps
        self.detach_masks_in_imitation = detach_masks_in_imitation
        self.mask_objective = mask_objective
        self.imitation_form = imitation_form
        self.mask_entropy_weight = mask_entropy_weight
        self.mask_uniform_mix = mask_uniform_mix
        self.mask_ramp_steps = mask_ramp_steps
        self.cwd_tau = cwd_tau
        self.mask_kinds = mask_kinds
        self.align = StudentAligner(student_channels, teacher_channels, alignment)
        self.fusion = self.masking = None
        if mask_objective != "uniform":
            self.fusion = StudentTeacherCrossAttention(
                teacher_channels, fusion_mode, detach_student_in_fusion, fusion_kv_reduction, fusion_max_kv_tokens
            )
            self.masking = AdaptiveSpatialChannelMasking(
                teacher_channels, num_masks, mask_kinds, activation=mask_activation,
                budgeted=mask_objective in MO.BUDGETED_OBJECTIVES,
            )
        if mask_objective == "adversarial":  # the reversal ramp's clock (see mask_ramp_steps; checkpointed: exact resume)
            self.register_buffer("mask_steps", torch.zeros((), dtype=torch.long))

    def _mask_scores(self, teacher: Tensor, aligned: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """The float32 selection scores: spatial ``(B, M, H, W)`` / channel ``(B, M, C)`` for ``F_T`` and ``F_S'``."""
        fused = self.fusion(teacher, aligned, factored=True)  # the autocast compute dtype; dense or factored
        with float32_region(aligned):
            return self.masking.scores(fused.float())

    def masks(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        """The masks this point computes for a batch: ``{"spatial": (B, M, H, W), "channel": (B, M, C)}`` (the
        enabled kinds only; float32, with their graph; none for the ``uniform`` control), without the losses. For
        visualisation and tests."""
        if self.masking is None:
            return {}
        teacher = teacher.detach()
        scores = self._mask_scores(teacher, self.align(student, teacher.shape[-2:]))
        with float32_region(teacher):
            masks = [None if kind is None else self.masking.activate(kind) for kind in scores]
        return {name: value for name, value in zip(("spatial", "channel"), masks) if value is not None}

    def forward(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        teacher = teacher.detach()  # the teacher is frozen, whatever graph its feature came from
        aligned = self.align(student, teacher.shape[-2:])
        with float32_region(aligned):
            if self.imitation_form == "squared_error":
                # D^2 summed per channel and per position, shared by L_c and L_s; no full map outlives this line but
                # D. Before the masks on purpose: autograd runs later-made nodes first, so the masks' and the
                # fusion's backward (and the tensors they hold) is done before the full-map backward of this one.
                error_sums = _imitation_error_sums(teacher, aligned, self.imitation_standardize, self.standardize_over)
            else:  # what the masks' objectives and diagnostics read: the standardised squared error, no gradient
                with torch.no_grad():
                    error_sums = _imitation_error_sums(teacher, aligned.detach(), True, self.standardize_over)
        if self.masking is None:
            return self._uniform_terms(teacher, aligned, error_sums)
        spatial_scores, channel_scores = self._mask_scores(teacher, aligned)
        with float32_region(aligned):
            spatial_masks = None if spatial_scores is None else self.masking.activate(spatial_scores)
            channel_masks = None if channel_scores is None else self.masking.activate(channel_scores)
            if self.mask_objective == "imitation":
                terms = self._imitation_trained_terms(spatial_masks, channel_masks, error_sums)
            else:
                terms = self._budgeted_terms(
                    teacher, aligned, spatial_scores, channel_scores, spatial_masks, channel_masks, error_sums
                )
            terms.update(self._diagnostics(spatial_masks, channel_masks, error_sums))
        return terms

    # ----------------------------------------------------------------------------------------------- the objectives
    def _dice_terms(self, spatial_masks: Tensor | None, channel_masks: Tensor | None) -> dict[str, Tensor]:
        """Each enabled kind's Dice term (``(B, M, L)`` masks; 1 = all masks alike, 0 = disjoint)."""
        dice = {}
        if channel_masks is not None:
            dice["channel"] = KD.dice_diversity(channel_masks)
        if spatial_masks is not None:
            dice["spatial"] = KD.dice_diversity(spatial_masks.flatten(2))
        return dice

    def _imitation_trained_terms(
        self, spatial_masks: Tensor | None, channel_masks: Tensor | None, error_sums: tuple[Tensor, Tensor]
    ) -> dict[str, Tensor]:
        """The paper's terms: the masks weight the imitation and train from it (unless detached)."""
        zero = error_sums[0].new_zeros(())
        channel = spatial = zero
        # What the imitation terms see of the masks (detached only with detach_masks_in_imitation).
        imitation = (lambda masks: masks.detach()) if self.detach_masks_in_imitation else (lambda masks: masks)
        if channel_masks is not None:
            channel = KD.channel_masked_loss(None, None, imitation(channel_masks), self.eps, self.mask_normalizer, error_sums)
        if spatial_masks is not None:
            spatial = KD.spatial_masked_loss(None, None, imitation(spatial_masks), self.eps, self.mask_normalizer, error_sums)
        dice = self._dice_terms(spatial_masks, channel_masks)
        diversity = sum(dice.values(), zero)
        loss = self.alpha * (channel + spatial) + self.lambda_div * diversity
        return {"loss": loss, "channel": channel, "spatial": spatial, "diversity": diversity,
                **{f"{kind}_diversity": dice.get(kind, zero) for kind in ("spatial", "channel")}}

    def _weighted_imitation(
        self, teacher: Tensor, aligned: Tensor, spatial_weights: Tensor | None, channel_weights: Tensor | None,
        error_sums: tuple[Tensor, Tensor],
    ) -> tuple[Tensor, Tensor]:
        """``(L_c, L_s)`` under detached imitation weights ``omega`` (``(B, C)`` / ``(B, HW)``; None: the kind is off)."""
        zero = error_sums[0].new_zeros(())
        channel = spatial = zero
        if self.imitation_form == "squared_error":
            per_channel, per_position = error_sums  # (B, C), (B, H, W)
            if channel_weights is not None:
                channel = MO.weighted_error_mean(channel_weights, per_channel, per_position[0].numel())
            if spatial_weights is not None:
                spatial = MO.weighted_error_mean(spatial_weights, per_position.flatten(1), per_channel.shape[1])
            return channel, spatial
        teacher32, aligned32 = imitated_pair(teacher, aligned, self.imitation_standardize, self.standardize_over)
        if channel_weights is not None:
            channel = (channel_weights * KD.channel_wise_kl(teacher32, aligned32, self.cwd_tau)).mean()
        if spatial_weights is not None:
            log_weights = spatial_weights.clamp_min(1e-30).log().view(teacher.shape[0], *teacher.shape[-2:])
            spatial = KD.channel_wise_kl(teacher32, aligned32, self.cwd_tau, log_weights).mean()
        return channel, spatial

    def _uniform_terms(self, teacher: Tensor, aligned: Tensor, error_sums: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        """The control: every weight 1 (both kinds unless ``mask_kinds`` turns one off)."""
        with float32_region(aligned):
            batch, channels = error_sums[0].shape
            ones = {
                "channel": error_sums[0].new_ones(batch, channels) if self.mask_kinds != "spatial" else None,
                "spatial": error_sums[0].new_ones(batch, error_sums[1][0].numel()) if self.mask_kinds != "channel" else None,
            }
            channel, spatial = self._weighted_imitation(teacher, aligned, ones["spatial"], ones["channel"], error_sums)
            return {"loss": self.alpha * (channel + spatial), "channel": channel, "spatial": spatial}

    def _budgeted_terms(
        self, teacher: Tensor, aligned: Tensor, spatial_scores: Tensor | None, channel_scores: Tensor | None,
        spatial_masks: Tensor | None, channel_masks: Tensor | None, error_sums: tuple[Tensor, Tensor],
    ) -> dict[str, Tensor]:
        """Budgeted masks, detached in the imitation; the selection units minimise the objective + ``lambda L_div``."""
        zero = error_sums[0].new_zeros(())
        weights = {
            kind: None if masks is None else MO.imitation_weights(masks.flatten(2), self.mask_uniform_mix)
            for kind, masks in (("spatial", spatial_masks), ("channel", channel_masks))
        }
        channel, spatial = self._weighted_imitation(teacher, aligned, weights["spatial"], weights["channel"], error_sums)
        per_channel, per_position = error_sums[0], error_sums[1].flatten(1)
        pairs = [(scores.flatten(2), errors) for scores, errors in ((spatial_scores, per_position), (channel_scores, per_channel))
                 if scores is not None]
        if self.mask_objective == "adversarial":
            strength = MO.ramp(int(self.mask_steps), self.mask_ramp_steps)
            if self.training:
                self.mask_steps += 1
            objective = sum((MO.adversarial_mask_objective(s, e, self.mask_entropy_weight, strength) for s, e in pairs), zero)
        elif self.mask_objective == "predictive":
            objective = sum((MO.predictive_mask_objective(s, e) for s, e in pairs), zero)
        else:  # task
            objective = MO.task_mask_objective(teacher.float(), spatial_masks, channel_masks)
        dice = self._dice_terms(spatial_masks, channel_masks)
        diversity = sum(dice.values(), zero)
        loss = self.alpha * (channel + spatial) + objective + self.lambda_div * diversity
        return {"loss": loss, "channel": channel, "spatial": spatial, "diversity": diversity, "mask_objective": objective.detach(),
                **{f"{kind}_diversity": dice.get(kind, zero) for kind in ("spatial", "channel")}}

    @torch.no_grad()
    def _diagnostics(
        self, spatial_masks: Tensor | None, channel_masks: Tensor | None, error_sums: tuple[Tensor, Tensor]
    ) -> dict[str, Tensor]:
        """Per kind: the mean mask value and the effective support; the spatial weight's rank correlation with the
        per-position error (a disabled kind logs 0)."""
        zero = error_sums[0].new_zeros(())
        stats = {}
        for name, masks in (("spatial", spatial_masks), ("channel", channel_masks)):
            stats[f"{name}_mask_mean"] = masks.detach().mean() if masks is not None else zero
            stats[f"{name}_mask_support"] = effective_support(masks.detach().flatten(2)) if masks is not None else zero
        stats["spatial_error_rank_corr"] = (
            rank_correlation(spatial_masks.detach().flatten(2).mean(dim=1), error_sums[1].flatten(1))
            if spatial_masks is not None else zero
        )
        return stats


__all__ = ["ACAMKDLoss"]
