"""Golden-value tests of acamkd_hf.functional: every expected value is computed here from the paper's formula with
plain Python loops over float64 tensors, never with the code under test."""

import itertools
import math

import pytest
import torch

from acamkd_hf import functional as KD

SHAPES = [  # (B, C, H, W, M): includes M = 1 and non-square maps
    (2, 3, 4, 5, 1),
    (1, 4, 3, 3, 2),
    (3, 5, 2, 6, 4),
]


def _inputs(batch, channels, height, width, num_masks, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    student = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    channel_masks = torch.rand(batch, num_masks, channels, generator=g, dtype=torch.float64)
    spatial_masks = torch.rand(batch, num_masks, height, width, generator=g, dtype=torch.float64)
    return teacher, student, channel_masks, spatial_masks


@pytest.mark.parametrize("shape", SHAPES)
def test_channel_masked_loss_matches_formula(shape):
    B, C, H, W, M = shape
    teacher, student, channel_masks, _ = _inputs(*shape)
    eps = 1e-6
    total = 0.0
    for b in range(B):
        per_sample = 0.0
        for m in range(M):
            numerator = sum(
                (channel_masks[b, m, k].item() * (teacher[b, k, h, w] - student[b, k, h, w]).item()) ** 2
                for k in range(C)
                for h in range(H)
                for w in range(W)
            )
            denominator = H * W * sum(channel_masks[b, m, k].item() for k in range(C)) + eps
            per_sample += numerator / denominator
        total += per_sample / M
    expected = total / B
    got = KD.channel_masked_loss(teacher, student, channel_masks, eps=eps)
    assert got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_spatial_masked_loss_matches_formula(shape):
    B, C, H, W, M = shape
    teacher, student, _, spatial_masks = _inputs(*shape, seed=1)
    eps = 1e-6
    total = 0.0
    for b in range(B):
        per_sample = 0.0
        for m in range(M):
            numerator = sum(
                (spatial_masks[b, m, h, w].item() * (teacher[b, k, h, w] - student[b, k, h, w]).item()) ** 2
                for k in range(C)
                for h in range(H)
                for w in range(W)
            )
            denominator = C * sum(spatial_masks[b, m, h, w].item() for h in range(H) for w in range(W)) + eps
            per_sample += numerator / denominator
        total += per_sample / M
    expected = total / B
    got = KD.spatial_masked_loss(teacher, student, spatial_masks, eps=eps)
    assert got.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_masked_losses_with_masks_of_ones_reduce_to_mse(shape):
    B, C, H, W, M = shape
    teacher, student, _, _ = _inputs(*shape, seed=2)
    mse = ((teacher - student) ** 2).sum().item() / (B * C * H * W)
    ones_c = torch.ones(B, M, C, dtype=torch.float64)
    ones_s = torch.ones(B, M, H, W, dtype=torch.float64)
    # eps -> 0 makes the normalisers exactly H*W*C: the plain mean-squared error.
    assert KD.channel_masked_loss(teacher, student, ones_c, eps=0.0).item() == pytest.approx(mse, rel=1e-12)
    assert KD.spatial_masked_loss(teacher, student, ones_s, eps=0.0).item() == pytest.approx(mse, rel=1e-12)
    # With the default eps, the difference is only the normaliser's eps.
    assert KD.channel_masked_loss(teacher, student, ones_c).item() == pytest.approx(mse, rel=1e-6)


@pytest.mark.parametrize("batch,num_masks,length", [(1, 2, 5), (2, 3, 7), (3, 6, 1), (2, 4, 12)])
def test_dice_diversity_matches_formula(batch, num_masks, length):
    masks = torch.rand(batch, num_masks, length, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps = 1e-12
    values = []
    for b in range(batch):
        for i, j in itertools.permutations(range(num_masks), 2):
            inner = sum(masks[b, i, p].item() * masks[b, j, p].item() for p in range(length))
            norm_i = sum(masks[b, i, p].item() ** 2 for p in range(length))
            norm_j = sum(masks[b, j, p].item() ** 2 for p in range(length))
            values.append(2 * inner / (norm_i + norm_j + eps))
    expected = sum(values) / len(values)
    assert KD.dice_diversity(masks, eps=eps).item() == pytest.approx(expected, rel=1e-10)


def test_dice_diversity_extremes():
    identical = torch.full((2, 3, 10), 0.7)
    assert KD.dice_diversity(identical).item() == pytest.approx(1.0, abs=1e-6)
    partition = torch.eye(4).unsqueeze(0)  # disjoint one-hot masks
    assert KD.dice_diversity(partition).item() == pytest.approx(0.0, abs=1e-12)
    single = torch.rand(2, 1, 5, requires_grad=True)
    value = KD.dice_diversity(single)
    assert value.item() == 0.0
    value.backward()  # M = 1 keeps a graph (no pair, zero gradient) instead of failing


@pytest.mark.parametrize("tau", [1.0, 4.0])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 3, 3)])
def test_channel_wise_distillation_matches_formula(shape, tau):
    B, C, H, W = shape
    g = torch.Generator().manual_seed(4)
    teacher = torch.randn(*shape, generator=g, dtype=torch.float64)
    student = torch.randn(*shape, generator=g, dtype=torch.float64)
    total = 0.0
    for b in range(B):
        for c in range(C):
            t = [teacher[b, c, h, w].item() / tau for h in range(H) for w in range(W)]
            s = [student[b, c, h, w].item() / tau for h in range(H) for w in range(W)]
            zt = sum(math.exp(x) for x in t)
            zs = sum(math.exp(x) for x in s)
            pt = [math.exp(x) / zt for x in t]
            ps = [math.exp(x) / zs for x in s]
            total += sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps))
    expected = total * tau**2 / (B * C)
    assert KD.channel_wise_distillation(teacher, student, tau).item() == pytest.approx(expected, rel=1e-10)
    assert KD.channel_wise_distillation(teacher, teacher, tau).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 4, 3, 3), (3, 2, 2, 6)])
def test_pearson_distillation_matches_formula(shape):
    """PKD: per channel, standardise each feature over (B, H, W) with the unbiased variance (eps = 1e-6 inside the
    square root), then mean squared difference / 2 over every element; computed here with plain loops in float64."""
    batch, channels, height, width = shape
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(*shape, generator=g, dtype=torch.float64) * 5 + 2
    student = torch.randn(*shape, generator=g, dtype=torch.float64) * 0.1 - 1

    def standardised(feature, c):
        values = [feature[b, c, h, w].item() for b in range(batch) for h in range(height) for w in range(width)]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return [(v - mean) / math.sqrt(std**2 + 1e-6**2) for v in values]

    total = 0.0
    for c in range(channels):
        total += sum((a - b) ** 2 for a, b in zip(standardised(student, c), standardised(teacher, c)))
    expected = total / (batch * channels * height * width) / 2
    assert KD.pearson_distillation(teacher, student).item() == pytest.approx(expected, rel=1e-9)
    # Scale-free: an affine change of either feature per channel (positive scale) changes nothing.
    scale = torch.rand(1, channels, 1, 1, generator=g, dtype=torch.float64) * 100 + 0.01
    assert KD.pearson_distillation(teacher * scale + 7, student).item() == pytest.approx(expected, rel=1e-6)
    assert KD.pearson_distillation(teacher, teacher * scale - 3).item() == pytest.approx(0.0, abs=1e-9)


def test_feature_mse_and_masked_generative_loss_match_formula():
    g = torch.Generator().manual_seed(5)
    teacher = torch.randn(3, 2, 4, 3, generator=g, dtype=torch.float64)
    other = torch.randn(3, 2, 4, 3, generator=g, dtype=torch.float64)
    squared = sum((teacher - other).flatten().tolist()[i] ** 2 for i in range(teacher.numel()))
    assert KD.feature_mse(teacher, other).item() == pytest.approx(squared / teacher.numel(), rel=1e-12)
    assert KD.masked_generative_loss(teacher, other).item() == pytest.approx(squared / 3, rel=1e-12)


def test_mgd_random_mask_ratio_and_values():
    mask = KD.mgd_random_mask(4, 50, 60, 0.65, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (4, 1, 50, 60)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    dropped = 1 - mask.mean().item()
    assert dropped == pytest.approx(0.65, abs=0.02)
    assert KD.mgd_random_mask(2, 3, 3, 0.0).min().item() == 1.0


@pytest.mark.parametrize("batch,channels,height,width,num_masks", SHAPES)
def test_selection_units_match_formula(batch, channels, height, width, num_masks):
    g = torch.Generator().manual_seed(6)
    fused = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    m_c = torch.randn(num_masks, 1, generator=g, dtype=torch.float64)
    m_s = torch.randn(num_masks, channels, generator=g, dtype=torch.float64)
    channel = KD.channel_selection(fused, m_c)
    spatial = KD.spatial_selection(fused, m_s)
    assert channel.shape == (batch, num_masks, channels)
    assert spatial.shape == (batch, num_masks, height, width)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    for b, m in itertools.product(range(batch), range(num_masks)):
        for k in range(channels):
            v_k = sum(fused[b, k, h, w].item() for h in range(height) for w in range(width)) / (height * width)
            assert channel[b, m, k].item() == pytest.approx(sig(m_c[m, 0].item() * v_k), rel=1e-10)
        for h, w in itertools.product(range(height), range(width)):
            z = sum(m_s[m, k].item() * fused[b, k, h, w].item() for k in range(channels))
            assert spatial[b, m, h, w].item() == pytest.approx(sig(z), rel=1e-10)


@pytest.mark.parametrize("batch,channels,height,width,num_masks", SHAPES)
def test_softmax_selection_matches_formula(batch, channels, height, width, num_masks):
    """activation="softmax": the same scores as the paper's, normalised across the M masks (exp / sum of exp)."""
    g = torch.Generator().manual_seed(8)
    fused = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    m_c = torch.randn(num_masks, 1, generator=g, dtype=torch.float64)
    m_s = torch.randn(num_masks, channels, generator=g, dtype=torch.float64)
    channel = KD.channel_selection(fused, m_c, activation="softmax")
    spatial = KD.spatial_selection(fused, m_s, activation="softmax")
    for b in range(batch):
        for k in range(channels):
            v_k = sum(fused[b, k, h, w].item() for h in range(height) for w in range(width)) / (height * width)
            exps = [math.exp(m_c[m, 0].item() * v_k) for m in range(num_masks)]
            for m in range(num_masks):
                assert channel[b, m, k].item() == pytest.approx(exps[m] / sum(exps), rel=1e-10)
        for h, w in itertools.product(range(height), range(width)):
            z = [sum(m_s[m, k].item() * fused[b, k, h, w].item() for k in range(channels)) for m in range(num_masks)]
            exps = [math.exp(value - max(z)) for value in z]
            for m in range(num_masks):
                assert spatial[b, m, h, w].item() == pytest.approx(exps[m] / sum(exps), rel=1e-10)


@pytest.mark.parametrize("d,value_channels", [(4, 8), (8, 8), (6, 3), (4, 10), (9, 19), (12, 30)])
def test_cross_attention_fusion_equals_naive_softmax_attention(d, value_channels):
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 15, d, generator=g, dtype=torch.float64)
    k = torch.randn(2, 8, d, generator=g, dtype=torch.float64)  # keys/values may come from another grid
    v = torch.randn(2, 8, value_channels, generator=g, dtype=torch.float64)
    expected = torch.zeros(2, 15, value_channels, dtype=torch.float64)
    for b in range(2):
        for i in range(15):
            logits = [sum(q[b, i, c].item() * k[b, j, c].item() for c in range(d)) / math.sqrt(d) for j in range(8)]
            top = max(logits)
            weights = [math.exp(x - top) for x in logits]
            total = sum(weights)
            for j in range(8):
                expected[b, i] += weights[j] / total * v[b, j]
    got = KD.cross_attention_fusion(q, k, v)
    assert got.shape == (2, 15, value_channels)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="align the student first"):
        KD.channel_masked_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 4, 4), torch.ones(1, 1, 2))


@pytest.mark.filterwarnings("ignore:Flash attention")  # the deliberate refused call below warns before raising
@pytest.mark.parametrize("d,value_channels", [(8, 16), (16, 16), (8, 12), (9, 19)])
def test_cross_attention_fusion_runs_on_the_fused_kernel(d, value_channels):
    """The O(HW * C) memory of STCA-FF rests on SDPA's fused (flash) kernel; PyTorch silently falls back to the
    O((HW)^2) math kernel for unequal head sizes or non-contiguous tokens. Restricting SDPA to the flash kernel
    makes any such fallback an error here (benchmarks/fusion_memory.py measures the memory itself)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from acamkd_hf.fusion import StudentTeacherCrossAttention

    query = torch.randn(2, 42, d, requires_grad=True)
    key = torch.randn(2, 42, d, requires_grad=True)
    value = torch.randn(2, 42, value_channels, requires_grad=True)
    fusion = StudentTeacherCrossAttention(16)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        KD.cross_attention_fusion(query, key, value).sum().backward()
        fusion(torch.randn(2, 16, 6, 7), torch.randn(2, 16, 6, 7, requires_grad=True)).sum().backward()
        # The guard itself works: an unchunked call with head sizes d and C is refused when they differ.
        if d != value_channels:
            with pytest.raises(RuntimeError):
                torch.nn.functional.scaled_dot_product_attention(query[:, None], key[:, None], value[:, None])


def test_sum_sq_normalizer_is_a_mask_weighted_mean_unchanged_by_the_masks_scale():
    """``normalizer="sum_sq"``: ``||M (.) D||^2 / (HW sum_k M_k^2)`` (channel) and ``/ (C sum_p M_p^2)`` (spatial),
    golden values by explicit loops in numpy; scaling every mask by 0.01 leaves them unchanged (the "sum" reading
    falls with the scale, which is what lets the masks collapse)."""
    import numpy as np

    from acamkd_hf.functional import channel_masked_loss, spatial_masked_loss

    rng = np.random.default_rng(0)
    B, C, H, W, M = 2, 3, 4, 5, 2
    t, s = rng.normal(size=(B, C, H, W)), rng.normal(size=(B, C, H, W))
    mc, ms = rng.uniform(0.1, 1, size=(B, M, C)), rng.uniform(0.1, 1, size=(B, M, H, W))
    d2 = (t - s) ** 2
    golden_c = np.mean([[sum(mc[b, m, k] ** 2 * d2[b, k].sum() for k in range(C)) / (H * W * (mc[b, m] ** 2).sum())
                         for m in range(M)] for b in range(B)])
    golden_s = np.mean([[sum(ms[b, m, i, j] ** 2 * d2[b, :, i, j].sum() for i in range(H) for j in range(W))
                         / (C * (ms[b, m] ** 2).sum()) for m in range(M)] for b in range(B)])
    T, S = torch.from_numpy(t), torch.from_numpy(s)
    for scale in (1.0, 0.01):
        channel = channel_masked_loss(T, S, torch.from_numpy(mc) * scale, eps=0.0, normalizer="sum_sq")
        spatial = spatial_masked_loss(T, S, torch.from_numpy(ms) * scale, eps=0.0, normalizer="sum_sq")
        assert channel.item() == pytest.approx(golden_c, rel=1e-10)
        assert spatial.item() == pytest.approx(golden_s, rel=1e-10)
    paper = spatial_masked_loss(T, S, torch.from_numpy(ms) * 0.01, eps=0.0).item()
    assert paper == pytest.approx(0.01 * spatial_masked_loss(T, S, torch.from_numpy(ms), eps=0.0).item(), rel=1e-10)
    with pytest.raises(ValueError, match="--mask_normalizer 'mean' is not one of"):
        spatial_masked_loss(T, S, torch.from_numpy(ms), normalizer="mean")


def test_squared_error_sums_match_the_formula_and_their_hand_written_backward_matches_autograd():
    """Per-channel and per-position sums of D^2 (loops here); the backward is written by hand (it saves memory), so
    gradcheck compares it with finite differences in float64, for both outputs together and each alone."""
    g = torch.Generator().manual_seed(11)
    difference = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    per_channel, per_position = KD.squared_error_sums(difference)
    d = difference.detach()
    for b in range(2):
        for c in range(3):
            expected = sum(d[b, c, h, w].item() ** 2 for h in range(4) for w in range(5))
            assert per_channel[b, c].item() == pytest.approx(expected, rel=1e-12)
        for h in range(4):
            for w in range(5):
                expected = sum(d[b, c, h, w].item() ** 2 for c in range(3))
                assert per_position[b, h, w].item() == pytest.approx(expected, rel=1e-12)
    assert torch.autograd.gradcheck(KD.squared_error_sums, (difference,))
    assert torch.autograd.gradcheck(lambda x: KD.squared_error_sums(x)[0], (difference,))
    assert torch.autograd.gradcheck(lambda x: KD.squared_error_sums(x)[1], (difference,))


def test_channel_standardize_is_the_formula_with_eps_inside_the_root_and_refuses_a_single_value():
    """(x - mean) / sqrt(var_unbiased + eps^2) per channel over (B, H, W), computed here by loops in float64, on a
    channel whose spread is of the order of eps (where eps and the Bessel correction both show) and a normal one."""
    g = torch.Generator().manual_seed(7)
    feature = torch.randn(2, 2, 1, 2, generator=g, dtype=torch.float64)  # n = 4 values per channel
    feature[:, 0] = feature[:, 0] * 1e-6 + 3.0
    eps = 1e-6
    got = KD.channel_standardize(feature, eps)
    for c in range(2):
        values = feature[:, c].flatten().tolist()
        mean = sum(values) / len(values)
        variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        expected = [(v - mean) / math.sqrt(variance + eps**2) for v in values]
        assert got[:, c].flatten().tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 values per channel"):
        KD.channel_standardize(torch.randn(1, 3, 1, 1))


@pytest.mark.parametrize("normalizer", ["sum", "sum_sq"])
def test_masked_error_ratio_and_dice_backward_written_by_hand_match_finite_differences(normalizer):
    """L_c / L_s's shared ratio and the Dice term have hand-written backwards (fewer ops on CPU): gradcheck compares
    them with finite differences in float64, each input alone and together; the values are the plain formulas,
    written here with loops."""
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    errors = torch.rand(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    extent, eps = 5.0, 1e-3
    got = KD.masked_error_ratio(masks, errors, extent, eps, normalizer).item()
    m, e = masks.detach().tolist(), errors.detach().tolist()
    power = 1 if normalizer == "sum" else 2
    expected = sum(
        sum(m[b][k][l] ** 2 * e[b][l] for l in range(4)) / (extent * sum(m[b][k][l] ** power for l in range(4)) + eps)
        for b in range(2) for k in range(3)
    ) / 6
    assert got == pytest.approx(expected, rel=1e-12)
    assert torch.autograd.gradcheck(lambda x, y: KD.masked_error_ratio(x, y, extent, eps, normalizer), (masks, errors))
    assert torch.autograd.gradcheck(lambda x: KD.masked_error_ratio(x, errors.detach(), extent, eps, normalizer), (masks,))
    assert torch.autograd.gradcheck(lambda y: KD.masked_error_ratio(masks.detach(), y, extent, eps, normalizer), (errors,))
    assert torch.autograd.gradcheck(lambda x: KD.dice_diversity(x, eps=1e-3), (masks,))
