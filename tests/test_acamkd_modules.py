"""Module-level tests of STCA-FF, ASCM, the per-point losses and the multi-point container: shapes, ranges,
references computed independently, and where gradients do and do not flow for every option."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acamkd_hf.acamkd_loss import ACAMKDLoss
from acamkd_hf.alignment import StudentAligner
from acamkd_hf.baseline_losses import CWDLoss, FeatureMSELoss, MGDLoss, PKDLoss
from acamkd_hf.fusion import StudentTeacherCrossAttention
from acamkd_hf.losses import MultiPointDistillationLoss
from acamkd_hf.masking import AdaptiveSpatialChannelMasking
from acamkd_hf.settings import ACAMKD_VARIANTS


def paper_loss(student_channels: int, teacher_channels: int, **keywords) -> ACAMKDLoss:
    """ACAM-KD with the paper's literal settings (the tests below check the paper's formulas), ``keywords`` on top."""
    return ACAMKDLoss(student_channels, teacher_channels, **{**ACAMKD_VARIANTS["paper"], **keywords})


def _features(student_channels=6, teacher_channels=8, student_hw=(3, 5), teacher_hw=(6, 10), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, student_channels, *student_hw, generator=g, requires_grad=True)
    teacher = torch.randn(batch, teacher_channels, *teacher_hw, generator=g, requires_grad=True)
    return student, teacher


def _naive_attention(query_map, key_map, value_map):
    q = query_map.flatten(2).transpose(1, 2)
    k = key_map.flatten(2).transpose(1, 2)
    v = value_map.flatten(2).transpose(1, 2)
    attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
    out = attn @ v
    return out.transpose(1, 2).reshape(value_map.shape[0], value_map.shape[1], *query_map.shape[-2:])


# ---------------------------------------------------------------------------------------------------------- fusion
def test_fusion_projection_sizes_follow_the_paper():
    fusion = StudentTeacherCrossAttention(16)
    assert (fusion.query.in_channels, fusion.query.out_channels) == (16, 8)
    assert (fusion.key.in_channels, fusion.key.out_channels) == (16, 8)
    assert (fusion.value.in_channels, fusion.value.out_channels) == (16, 16)


@pytest.mark.parametrize(
    "mode,query_from,key_value_from",
    [("teacher_query", "teacher", "student"), ("student_query", "student", "teacher"), ("teacher_only", "teacher", "teacher")],
)
def test_fusion_equals_naive_attention_for_each_mode(mode, query_from, key_value_from):
    torch.manual_seed(0)
    fusion = StudentTeacherCrossAttention(8, mode=mode)
    teacher = torch.randn(2, 8, 4, 6)
    student = torch.randn(2, 8, 4, 6)
    sources = {"teacher": teacher, "student": student}

    def conv(layer, x):  # a 1x1 convolution written as an einsum
        return torch.einsum("oc,bchw->bohw", layer.weight[:, :, 0, 0], x) + layer.bias.view(1, -1, 1, 1)

    expected = _naive_attention(
        conv(fusion.query, sources[query_from]),
        conv(fusion.key, sources[key_value_from]),
        conv(fusion.value, sources[key_value_from]),
    )
    torch.testing.assert_close(fusion(teacher, student), expected, atol=1e-5, rtol=1e-5)


def _block_means(feature, ratio):
    """Mean of each ratio x ratio block (blocks cut by the edge: the positions they hold), by explicit loops."""
    batch, channels, height, width = feature.shape
    rows, cols = -(-height // ratio), -(-width // ratio)
    out = torch.zeros(batch, channels, rows, cols, dtype=feature.dtype)
    for i in range(rows):
        for j in range(cols):
            block = feature[:, :, i * ratio : (i + 1) * ratio, j * ratio : (j + 1) * ratio]
            out[:, :, i, j] = block.sum(dim=(2, 3)) / (block.shape[2] * block.shape[3])
    return out


@pytest.mark.parametrize(
    "ratio,size",
    # key tokens: 35, 12, 12, 12, 1, 4 and 6 (factored, W_q folded into the keys), 272 (> MAX_FACTORED_KEYS: the
    # dense attention kernel)
    [(1, (5, 7)), (2, (6, 8)), (2, (5, 7)), (3, (7, 10)), (4, (4, 4)), (4, (8, 8)), (2, (4, 6)), (1, (17, 16))],
)
def test_reduced_fusion_equals_naive_attention_over_block_mean_keys_and_values(ratio, size):
    """Sequence reduction R: queries at full resolution; keys/values from the R x R block means of the student
    (computed here by loops); the result keeps the full map size. R = 1 is the paper's exact fusion."""
    torch.manual_seed(0)
    fusion = StudentTeacherCrossAttention(8, kv_reduction=ratio)
    teacher, student = torch.randn(2, 8, *size), torch.randn(2, 8, *size)

    def conv(layer, x):
        return torch.einsum("oc,bchw->bohw", layer.weight[:, :, 0, 0], x) + layer.bias.view(1, -1, 1, 1)

    reduced = _block_means(student, ratio)
    query = conv(fusion.query, teacher)
    q = query.flatten(2).transpose(1, 2)
    k = conv(fusion.key, reduced).flatten(2).transpose(1, 2)
    v = conv(fusion.value, reduced).flatten(2).transpose(1, 2)
    expected = (torch.softmax(q @ k.transpose(1, 2) / math.sqrt(4), dim=-1) @ v).transpose(1, 2).reshape(2, 8, *size)
    got = fusion(teacher, student)
    assert got.shape == (2, 8, *size)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size,max_kv_tokens", [((9, 12), 20), ((9, 12), 4), ((34, 34), 300)])
def test_reduced_fusion_keeps_gradients_and_the_fused_kernel_where_keys_are_many(size, max_kv_tokens):
    """Gradients reach both features and every projection, in the factored form (20 and 4 keys, W_q folded into
    the keys) and in the dense one (289 keys > MAX_FACTORED_KEYS), where the fused attention kernel must run: a fall-
    back to the O(N^2)-memory math kernel would be an error."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from acamkd_hf.fusion import MAX_FACTORED_KEYS, FactoredFusion

    torch.manual_seed(0)
    teacher = torch.randn(2, 16, *size, requires_grad=True)
    student = torch.randn(2, 16, *size, requires_grad=True)
    fusion = StudentTeacherCrossAttention(16, mode="teacher_query", detach_student=False, kv_reduction="auto", max_kv_tokens=max_kv_tokens)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        fused = fusion(teacher, student, factored=True)
        assert isinstance(fused, FactoredFusion) == (max_kv_tokens <= MAX_FACTORED_KEYS)
        fusion(teacher, student).square().sum().backward()
    assert teacher.grad.abs().sum() > 0 and student.grad.abs().sum() > 0
    for name, parameter in fusion.named_parameters():
        if name != "key.bias":  # softmax ignores it (a constant per query row)
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


class _WrappedConv(nn.Module):
    """A projection behind a wrapper (as FSDP's may be): the fusion must call it, never read its weight."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.inner = conv

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("ratio", [2, 4])  # 12 and 4 keys
@pytest.mark.parametrize("wrapped_query", [False, True])  # W_q folded into the keys / the queries projected by its call
def test_masks_from_the_factored_fusion_equal_masks_of_the_dense_map_with_their_gradients(activation, ratio, wrapped_query):
    """The factored form never forms F_fused; its masks and every gradient must be those of the dense map,
    computed here from the formulas (einsum projections, softmax attention, GAP) on F_fused = A V."""
    from acamkd_hf.fusion import FactoredFusion

    torch.manual_seed(0)
    fusion = StudentTeacherCrossAttention(8, kv_reduction=ratio)
    query_conv = fusion.query
    if wrapped_query:
        fusion.query = _WrappedConv(query_conv)
    masking = AdaptiveSpatialChannelMasking(8, num_masks=3, activation=activation, init_std=0.5)
    teacher, student = torch.randn(2, 8, 6, 8), torch.randn(2, 8, 6, 8)
    fused = fusion(teacher, student, factored=True)
    assert isinstance(fused, FactoredFusion)
    spatial, channel = masking(fused)
    (spatial.square().sum() + channel.square().sum()).backward()
    got = {name: p.grad.clone() for name, p in [*fusion.named_parameters(), *masking.named_parameters()]}
    got_masks = (spatial.detach(), channel.detach())
    for p in [*fusion.parameters(), *masking.parameters()]:
        p.grad = None

    def conv(layer, x):
        return torch.einsum("oc,bchw->bohw", layer.weight[:, :, 0, 0], x) + layer.bias.view(1, -1, 1, 1)

    reduced = _block_means(student, ratio)
    q = conv(query_conv, teacher).flatten(2).transpose(1, 2)
    k = conv(fusion.key, reduced).flatten(2).transpose(1, 2)
    v = conv(fusion.value, reduced).flatten(2).transpose(1, 2)
    dense = (torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v).transpose(1, 2).reshape(2, 8, 6, 8)
    act = (lambda x: torch.sigmoid(x)) if activation == "sigmoid" else (lambda x: torch.softmax(x, dim=1))
    expected_spatial = act(torch.einsum("mc,bchw->bmhw", masking.spatial_units, dense))
    expected_channel = act(masking.channel_units.view(1, 3, 1) * dense.mean(dim=(2, 3)).unsqueeze(1))
    (expected_spatial.square().sum() + expected_channel.square().sum()).backward()
    torch.testing.assert_close(got_masks[0], expected_spatial.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_masks[1], expected_channel.detach(), atol=1e-5, rtol=1e-5)
    for name, p in [*fusion.named_parameters(), *masking.named_parameters()]:
        if name == "key.bias":
            continue  # zero by construction (softmax ignores a per-row constant); both sides ~1e-9 noise
        torch.testing.assert_close(got[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_auto_reduction_picks_the_smallest_ratio_within_the_token_budget():
    from acamkd_hf.fusion import kv_reduction_ratio

    for height, width, budget in [(64, 128, 1024), (128, 256, 1024), (16, 32, 512), (33, 65, 100), (7, 7, 1)]:
        ratio = kv_reduction_ratio("auto", height, width, budget)
        def tokens(r, height=height, width=width):
            return -(-height // r) * -(-width // r)
        assert tokens(ratio) <= budget and (ratio == 1 or tokens(ratio - 1) > budget)
    assert kv_reduction_ratio("4", 64, 128) == 4
    with pytest.raises(ValueError, match=">= 1 or 'auto'"):
        kv_reduction_ratio(0, 4, 4)


def test_fusion_depends_on_the_student_except_in_teacher_only_mode():
    torch.manual_seed(0)
    teacher = torch.randn(1, 8, 4, 4)
    student_a, student_b = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)
    for mode in ("teacher_query", "student_query"):
        fusion = StudentTeacherCrossAttention(8, mode=mode)
        assert not torch.allclose(fusion(teacher, student_a), fusion(teacher, student_b))
    fusion = StudentTeacherCrossAttention(8, mode="teacher_only")
    torch.testing.assert_close(fusion(teacher, student_a), fusion(teacher, student_b))


def test_bad_fusion_mode_lists_the_choices():
    with pytest.raises(ValueError, match="teacher_query, student_query, teacher_only"):
        StudentTeacherCrossAttention(8, mode="cross")


# ---------------------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("num_masks", [1, 6, 19])
def test_masks_shapes_and_range(num_masks):
    masking = AdaptiveSpatialChannelMasking(8, num_masks)
    # The normal(0, 0.01) initialisation of the paper: small, not all equal.
    for units in (masking.channel_units, masking.spatial_units):
        assert units.abs().max().item() < 0.06 and units.unique().numel() == units.numel()
    # Units of 1 and a fused map whose logits reach +-12 (spatial: 8 * s_hw; channel: c_k): near the ends of the
    # sigmoid, where (0, 1) is easiest to break, yet inside what float32 can tell from 0 and 1 (it saturates ~17).
    with torch.no_grad():
        masking.channel_units.fill_(1.0)
        masking.spatial_units.fill_(1.0)
    s_hw = torch.linspace(-1.5, 1.5, 21).view(1, 1, 3, 7)
    c_k = torch.linspace(-12, 12, 8).view(1, 8, 1, 1)
    fused = (s_hw + c_k).expand(2, 8, 3, 7)
    spatial, channel = masking(fused)
    assert spatial.min().item() < 1e-4 and spatial.max().item() > 1 - 1e-4
    assert channel.min().item() < 1e-4 and channel.max().item() > 1 - 1e-4
    assert spatial.shape == (2, num_masks, 3, 7)
    assert channel.shape == (2, num_masks, 8)
    for masks in (spatial, channel):
        assert masks.min().item() > 0.0 and masks.max().item() < 1.0


@pytest.mark.parametrize("kinds,has_spatial,has_channel", [("both", True, True), ("spatial", True, False), ("channel", False, True)])
def test_mask_kind_options(kinds, has_spatial, has_channel):
    masking = AdaptiveSpatialChannelMasking(8, 3, kinds=kinds)
    spatial, channel = masking(torch.randn(1, 8, 2, 2))
    assert (spatial is not None, channel is not None) == (has_spatial, has_channel)
    assert (masking.spatial_units is not None, masking.channel_units is not None) == (has_spatial, has_channel)


# ---------------------------------------------------------------------------------------------------------- alignment
def test_aligner_resizes_bilinearly_then_projects():
    aligner = StudentAligner(3, 5)
    student = torch.randn(2, 3, 4, 4)
    resized = F.interpolate(student, size=(8, 6), mode="bilinear", align_corners=False)
    expected = torch.einsum("oc,bchw->bohw", aligner.proj.weight[:, :, 0, 0], resized) + aligner.proj.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(aligner(student, (8, 6)), expected)


def test_identity_alignment_needs_equal_channels():
    assert StudentAligner(4, 4, "identity")(torch.ones(1, 4, 2, 2), (2, 2)).sum().item() == 16
    with pytest.raises(ValueError, match="student has 3 and the teacher 4"):
        StudentAligner(3, 4, "identity")


# ---------------------------------------------------------------------------------------------------------- ACAM-KD
def test_acamkd_terms_are_consistent_with_their_weights():
    torch.manual_seed(0)
    loss = paper_loss(6, 8, num_masks=4, alpha=0.3, lambda_div=2.0)
    student, teacher = _features()
    out = loss(student, teacher)
    assert set(out) == {"loss", "channel", "spatial", "diversity", "spatial_mask_mean", "channel_mask_mean",
                        "spatial_diversity", "channel_diversity", "spatial_mask_support", "channel_mask_support",
                        "spatial_error_rank_corr"}
    torch.testing.assert_close(out["spatial_diversity"] + out["channel_diversity"], out["diversity"])
    assert out["spatial_mask_mean"].item() == pytest.approx(loss.masks(student, teacher)["spatial"].mean().item())
    expected = 0.3 * (out["channel"] + out["spatial"]) + 2.0 * out["diversity"]
    torch.testing.assert_close(out["loss"], expected)
    # Freshly initialised masks are all ~0.5, so every pair of masks is near-identical: Dice ~1 for both kinds.
    assert out["diversity"].item() == pytest.approx(2.0, abs=1e-3)


def test_acamkd_gradients_reach_every_trainable_part_and_never_the_teacher():
    torch.manual_seed(0)
    loss = paper_loss(6, 8, num_masks=3)
    student, teacher = _features()
    loss(student, teacher)["loss"].backward()
    assert teacher.grad is None  # the teacher is frozen: its feature is detached inside the loss
    assert student.grad is not None and student.grad.abs().sum() > 0
    for name, parameter in loss.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_student_gets_gradient_only_through_the_imitation_when_detached():
    torch.manual_seed(0)
    for detach, student_gets_diversity_gradient in ((True, False), (False, True)):
        loss = paper_loss(6, 8, num_masks=3, detach_student_in_fusion=detach)
        student, teacher = _features()
        loss(student, teacher)["diversity"].backward()
        got = student.grad is not None and student.grad.abs().sum().item() > 0
        assert got == student_gets_diversity_gradient
        # Whatever the choice, the diversity term trains the fusion and the selection units.
        assert loss.fusion.value.weight.grad.abs().sum() > 0
        assert loss.masking.spatial_units.grad.abs().sum() > 0


def test_teacher_only_masks_take_no_gradient_from_the_student_path():
    torch.manual_seed(0)
    loss = paper_loss(6, 8, num_masks=3, fusion_mode="teacher_only", detach_student_in_fusion=False)
    student, teacher = _features()
    loss(student, teacher)["diversity"].backward()
    assert student.grad is None  # masks built from the teacher alone
    assert loss.align.proj.weight.grad is None


@pytest.mark.parametrize("kinds", ["spatial", "channel"])
def test_single_mask_kind_zeroes_the_other_terms(kinds):
    torch.manual_seed(0)
    loss = paper_loss(6, 8, num_masks=3, mask_kinds=kinds)
    features = _features()
    out = loss(*features)
    off = "channel" if kinds == "spatial" else "spatial"
    assert out[off].item() == 0.0 and out[kinds].item() > 0
    assert out["diversity"].item() == pytest.approx(1.0, abs=1e-3)  # only one kind's Dice
    assert set(loss.masks(*features)) == {kinds}


def test_acamkd_losses_equal_the_functional_formulas_on_the_module_masks():
    torch.manual_seed(0)
    loss = paper_loss(8, 8, num_masks=2, alignment="identity")
    student, teacher = _features(student_channels=8, student_hw=(6, 10))
    out = loss(student, teacher)
    masks = {kind: value.detach() for kind, value in loss.masks(student, teacher).items()}
    spatial, channel = masks["spatial"], masks["channel"]
    d2 = (teacher - student).detach() ** 2
    l_c = ((channel**2)[..., None, None] * d2[:, None]).sum((2, 3, 4)) / (60 * channel.sum(2) + 1e-6)
    l_s = ((spatial**2)[:, :, None] * d2[:, None]).sum((2, 3, 4)) / (8 * spatial.sum((2, 3)) + 1e-6)
    torch.testing.assert_close(out["channel"], l_c.mean())
    torch.testing.assert_close(out["spatial"], l_s.mean())


# ---------------------------------------------------------------------------------------------------------- baselines
def test_baselines_share_the_interface_and_match_their_formulas():
    torch.manual_seed(0)
    student, teacher = _features(student_channels=8, student_hw=(6, 10))
    s, t = student.detach(), teacher.detach()

    mse = FeatureMSELoss(8, 8, weight=2.0, alignment="identity")(student, teacher)
    assert set(mse) == {"loss", "mse"}
    assert mse["mse"].item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    assert mse["loss"].item() == pytest.approx(2 * mse["mse"].item(), rel=1e-6)

    cwd = CWDLoss(8, 8, tau=4.0, alignment="identity")(student, teacher)
    p_t = torch.softmax(t.flatten(2) / 4, -1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s.flatten(2) / 4, -1))).sum(-1).mean()
    assert cwd["cwd"].item() == pytest.approx(16 * kl.item(), rel=1e-5)

    mgd_module = MGDLoss(8, 8, weight=1.0, mask_ratio=0.0, alignment="identity")
    mgd = mgd_module(student, teacher)
    generated = mgd_module.generator(s)
    assert mgd["mgd"].item() == pytest.approx(((generated - t) ** 2).sum().item() / 2, rel=1e-5)

    pkd = PKDLoss(8, 8, alignment="identity")(student, teacher)
    assert set(pkd) == {"loss", "pkd"}
    # 1 - Pearson r per channel (r over batch and positions), averaged; r from numpy, not from the package.
    import numpy as np

    s_np, t_np = s.double().numpy(), t.double().numpy()
    r = [np.corrcoef(s_np[:, c].ravel(), t_np[:, c].ravel())[0, 1] for c in range(8)]
    n = s_np[:, 0].size
    assert pkd["pkd"].item() == pytest.approx(np.mean([(1 - rc) * (n - 1) / n for rc in r]), rel=1e-4)
    assert pkd["loss"].item() == pytest.approx(6.0 * pkd["pkd"].item(), rel=1e-6)  # mmrazor's published weight

    for module in (FeatureMSELoss(6, 8), MGDLoss(6, 8), CWDLoss(6, 8), PKDLoss(6, 8)):
        student, teacher = _features()
        module(student, teacher)["loss"].backward()
        assert teacher.grad is None and student.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------- points
def test_multi_point_sums_points_and_names_every_term():
    torch.manual_seed(0)
    levels = {"neck1": paper_loss(6, 8, num_masks=2), "neck2": FeatureMSELoss(4, 8)}
    container = MultiPointDistillationLoss(levels)
    s1, t1 = _features()
    s2, t2 = _features(student_channels=4, teacher_hw=(3, 5), seed=1)
    out = container({"neck1": s1, "neck2": s2}, {"neck1": t1, "neck2": t2})
    assert set(out) == {"loss", "neck1/loss", "neck1/channel", "neck1/spatial", "neck1/diversity", "neck2/loss", "neck2/mse",
                        "neck1/spatial_mask_mean", "neck1/channel_mask_mean",
                        "neck1/spatial_diversity", "neck1/channel_diversity", "neck1/spatial_mask_support",
                        "neck1/channel_mask_support", "neck1/spatial_error_rank_corr"}
    torch.testing.assert_close(out["loss"], out["neck1/loss"] + out["neck2/loss"])
    with pytest.raises(KeyError, match="neck2 \\(teacher\\)"):
        container({"neck1": s1, "neck2": s2}, {"neck1": t1})
    with pytest.raises(ValueError, match="may not be empty"):
        MultiPointDistillationLoss({"": FeatureMSELoss(4, 8)})
    # A module point's dots cannot be ModuleDict keys: stored as "/", named as given.
    dotted = MultiPointDistillationLoss({"module:backbone.stage1": FeatureMSELoss(4, 8)})
    assert dotted.point_names == ["module:backbone.stage1"] and list(dotted.points) == ["module:backbone/stage1"]
    assert "module:backbone.stage1/loss" in dotted({"module:backbone.stage1": s2}, {"module:backbone.stage1": t2})


def test_student_query_mode_trains_from_both_sides():
    torch.manual_seed(0)
    loss = paper_loss(6, 8, num_masks=3, fusion_mode="student_query", detach_student_in_fusion=False)
    student, teacher = _features()
    loss(student, teacher)["diversity"].backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0  # the query comes from the student
    assert loss.fusion.query.weight.grad.abs().sum() > 0 and loss.fusion.key.weight.grad.abs().sum() > 0


def test_detach_masks_in_imitation_keeps_imitation_gradient_out_of_the_masks():
    """With the literal reading (default) L_c and L_s train the selection units; the option stops that, leaving
    the Dice term as their only teacher, while the student still learns from the imitation."""
    torch.manual_seed(0)
    for detach, units_get_imitation_gradient in ((False, True), (True, False)):
        loss = paper_loss(6, 8, num_masks=3, detach_masks_in_imitation=detach)
        student, teacher = _features()
        out = loss(student, teacher)
        (out["channel"] + out["spatial"]).backward()
        got = loss.masking.spatial_units.grad is not None and loss.masking.spatial_units.grad.abs().sum().item() > 0
        assert got == units_get_imitation_gradient
        assert student.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- alignability
def test_points_that_cannot_be_aligned_are_refused_naming_the_point():
    from acamkd_hf.distiller import build_distillation_loss
    from acamkd_hf.settings import DistillationSettings

    def build(student_shape, teacher_shape, **settings):
        resolved = DistillationSettings(method="acamkd", **settings).resolved(["neck2"], num_masks=6)
        return build_distillation_loss(resolved, {"neck2": student_shape}, {"neck2": teacher_shape})

    build((64, 33, 65), (256, 64, 128))  # odd sizes from padding: a stride ratio of ~2 on both axes is fine
    with pytest.raises(ValueError, match=r"'neck2'.*16x64 map.*32x32 map.*strides along height and width"):
        build((64, 16, 64), (256, 32, 32))
    with pytest.raises(ValueError, match=r"'neck2'.*--alignment identity needs equal channels.*64 and the teacher 256"):
        build((64, 32, 32), (256, 32, 32), alignment="identity")
    with pytest.raises(ValueError, match=r"'neck2'.*student's feature has shape \(B, 100, 256\), not a \(B, C, H, W\) map"):
        build((100, 256), (256, 32, 32))


# ------------------------------------------------------------------------------------------ masks that cannot collapse
def _optimise_masks_alone(activation, normalizer="sum", steps=300):
    """Many Adam steps of the selection units alone on a fixed pair of features (the imitation terms only): what
    the masks become when they learn from the loss they weight."""
    torch.manual_seed(0)
    loss = paper_loss(8, 8, num_masks=4, alignment="identity", lambda_div=0.0, mask_normalizer=normalizer,
                      mask_activation=activation)
    student, teacher = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    optimizer = torch.optim.Adam(loss.masking.parameters(), lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        loss(student, teacher)["loss"].backward()
        optimizer.step()
    return {kind: masks.detach() for kind, masks in loss.masks(student, teacher).items()}


def test_sigmoid_masks_collapse_under_the_paper_normaliser_and_softmax_masks_cannot():
    """The paper's sigmoid masks with the sum-M normaliser shrink towards 0 when the selection units learn from the
    imitation (the measured collapse); softmax masks partition the map (and the channels), so their mean is 1/M at
    every step: the floor stated here is 1/M (= 0.25) up to rounding."""
    collapsed = _optimise_masks_alone("sigmoid")
    assert collapsed["spatial"].mean() < 0.05  # the test can fail (channel masks sigma(m_c v_k) shrink only where
    # the pooled v_k share a sign, so their mean moves less: 0.38 here)
    partition = _optimise_masks_alone("softmax")
    for kind, masks in partition.items():
        assert masks.mean().item() == pytest.approx(0.25, abs=1e-6), kind
        torch.testing.assert_close(masks.sum(dim=1), torch.ones_like(masks.sum(dim=1)))


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_standardised_acamkd_equals_the_formula_on_standardised_features(activation):
    """imitation_standardize: L_c and L_s of the per-channel standardised features (mean 0, unbiased std 1 over
    batch and positions, computed here with numpy), on the module's own masks; sum-M normaliser."""
    import numpy as np

    torch.manual_seed(0)
    loss = paper_loss(8, 8, num_masks=3, alignment="identity", imitation_standardize=True, mask_activation=activation)
    student, teacher = _features(student_channels=8, student_hw=(6, 10))
    out = loss(student, teacher)
    masks = {kind: value.detach().double().numpy() for kind, value in loss.masks(student, teacher).items()}

    def standardised(x):
        x = x.detach().double().numpy()
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        std = x.std(axis=(0, 2, 3), ddof=1, keepdims=True)
        return (x - mean) / np.sqrt(std**2 + 1e-6**2)

    d2 = (standardised(teacher) - standardised(student)) ** 2  # (B, C, H, W)
    channel, spatial = masks["channel"], masks["spatial"]  # (B, M, C), (B, M, H, W)
    l_c = np.einsum("bmc,bchw->bm", channel**2, d2) / (60 * channel.sum(2) + 1e-6)
    l_s = np.einsum("bmhw,bchw->bm", spatial**2, d2) / (8 * spatial.sum((2, 3)) + 1e-6)
    assert out["channel"].item() == pytest.approx(l_c.mean(), rel=1e-5)
    assert out["spatial"].item() == pytest.approx(l_s.mean(), rel=1e-5)
