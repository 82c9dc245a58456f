"""The mask objectives (adversarial, predictive, task), the uniform-mask control, the masked distribution imitation,
per-image standardisation and the mask diagnostics: golden values written out in the test (loops, numpy, scipy),
where the gradients go, and that the learned masks cannot collapse where the paper's do."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from acamkd_hf import mask_objectives as MO
from acamkd_hf.acamkd_loss import ACAMKDLoss
from acamkd_hf.baseline_losses import FeatureMSELoss
from acamkd_hf.distiller import build_distillation_loss
from acamkd_hf.functional import channel_standardize, channel_wise_kl
from acamkd_hf.mask_diagnostics import effective_support, rank_correlation
from acamkd_hf.settings import DistillationSettings

T = MO.BUDGET_TEMPERATURE


def _softmax(row):
    exps = [math.exp(v) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _features(channels=8, hw=(6, 10), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, channels, *hw, generator=g, requires_grad=True)
    teacher = torch.randn(batch, channels, *hw, generator=g) * 3 + 1
    return student, teacher


def _standardised(x, over="batch"):
    x = x.detach().double().numpy()
    axes = (0, 2, 3) if over == "batch" else (2, 3)
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, ddof=1, keepdims=True)
    return (x - mean) / np.sqrt(std**2 + 1e-6**2)


# -------------------------------------------------------------------------------------------- the pure functions
def test_budget_masks_are_the_tempered_softmax_times_the_length():
    scores = torch.randn(2, 3, 5, dtype=torch.float64)
    masks = MO.budget_masks(scores)
    for b in range(2):
        for m in range(3):
            expected = [5 * q for q in _softmax([v / T for v in scores[b, m].tolist()])]
            assert masks[b, m].tolist() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(masks.sum(dim=-1), torch.full((2, 3), 5.0, dtype=torch.float64))


def test_imitation_weights_mix_the_mean_mask_with_uniform_weight_and_are_detached():
    masks = MO.budget_masks(torch.randn(2, 3, 4, requires_grad=True))
    weights = MO.imitation_weights(masks, 0.25)
    assert not weights.requires_grad
    for b in range(2):
        for l in range(4):
            mean_mask = sum(masks[b, m, l].item() for m in range(3)) / 3
            assert weights[b, l].item() == pytest.approx(0.75 + 0.25 * mean_mask, rel=1e-6)


def test_weighted_error_mean_is_the_weighted_mean_squared_error():
    weights, errors = torch.rand(2, 5), torch.rand(2, 5)
    expected = sum(weights[b, l].item() * errors[b, l].item() for b in range(2) for l in range(5)) / (2 * 5 * 7)
    assert MO.weighted_error_mean(weights, errors, 7).item() == pytest.approx(expected, rel=1e-6)
    assert MO.weighted_error_mean(torch.ones(2, 5), errors, 7).item() == pytest.approx(errors.mean().item() / 7, rel=1e-6)


def test_adversarial_objective_matches_the_formula():
    scores, errors = torch.randn(2, 3, 6, dtype=torch.float64), torch.rand(2, 6, dtype=torch.float64) + 0.1
    beta, strength = 0.7, 0.4
    total = 0.0
    for b in range(2):
        mean_error = sum(errors[b].tolist()) / 6
        for m in range(3):
            q = _softmax([v / T for v in scores[b, m].tolist()])
            gain = sum(q[l] * math.log(errors[b, l].item() / mean_error) for l in range(6))
            kl = sum(q[l] * math.log(q[l] * 6) for l in range(6))
            total += -strength * gain + beta * kl
    value = MO.adversarial_mask_objective(scores, errors, beta, strength)
    assert value.item() == pytest.approx(total / 6, rel=1e-10)


def test_adversarial_objective_is_minimised_by_weight_where_the_error_is():
    """Its minimiser for fixed errors: q proportional to e~^(s / beta) (checked by minimising it numerically)."""
    errors = torch.tensor([[1.0, 2.0, 4.0, 1.0]], dtype=torch.float64)
    scores = torch.zeros(1, 1, 4, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([scores], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        optimizer.zero_grad()
        value = MO.adversarial_mask_objective(scores, errors, 0.5, 1.0)
        value.backward()
        return value

    optimizer.step(closure)
    relative = (errors / errors.mean()).squeeze().tolist()
    expected = [r**2 / sum(x**2 for x in relative) for r in relative]  # beta 0.5: e~^2
    assert torch.softmax(scores / T, dim=-1).squeeze().tolist() == pytest.approx(expected, abs=1e-5)


def test_predictive_objective_regresses_the_per_image_standardised_error():
    scores, errors = torch.randn(2, 3, 6, dtype=torch.float64), torch.rand(2, 6, dtype=torch.float64)
    total = 0.0
    for b in range(2):
        row = errors[b].tolist()
        mean = sum(row) / 6
        std = math.sqrt(sum((e - mean) ** 2 for e in row) / 5)
        target = [(e - mean) / std for e in row]
        for m in range(3):
            tempered = [v / T for v in scores[b, m].tolist()]
            centre = sum(tempered) / 6
            total += sum((tempered[l] - centre - target[l]) ** 2 for l in range(6))
    assert MO.predictive_mask_objective(scores, errors).item() == pytest.approx(total / 36, rel=1e-10)


def test_task_objective_is_the_cross_entropy_of_the_masked_teacher_scores_against_its_own_prediction():
    logits = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    spatial = MO.budget_masks(torch.randn(2, 2, 15, dtype=torch.float64)).view(2, 2, 3, 5)
    channel = MO.budget_masks(torch.randn(2, 2, 4, dtype=torch.float64))

    def cross_entropy(scores_at, label):  # scores_at: the 4 class scores at one position
        return -math.log(_softmax(scores_at)[label])

    spatial_total = channel_total = 0.0
    for b in range(2):
        for h in range(3):
            for w in range(5):
                column = logits[b, :, h, w].tolist()
                label = column.index(max(column))
                for m in range(2):
                    spatial_total += cross_entropy([v * spatial[b, m, h, w].item() for v in column], label)
                    channel_total += cross_entropy([v * channel[b, m, k].item() for k, v in enumerate(column)], label)
    expected = (spatial_total + channel_total) / (2 * 2 * 15)
    assert MO.task_mask_objective(logits, spatial, channel).item() == pytest.approx(expected, rel=1e-10)
    only_spatial = MO.task_mask_objective(logits, spatial, None).item()
    assert only_spatial == pytest.approx(spatial_total / 60, rel=1e-10)


def test_ramp_goes_from_zero_to_one():
    assert [MO.ramp(step, 4) for step in (0, 1, 2, 4, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert MO.ramp(0, 0) == 1.0


def test_channel_wise_kl_with_position_weights_is_the_kl_of_the_reweighted_distributions():
    teacher, student = torch.randn(2, 3, 2, 3, dtype=torch.float64), torch.randn(2, 3, 2, 3, dtype=torch.float64)
    weights = torch.rand(2, 2, 3, dtype=torch.float64) + 0.1
    tau = 2.0
    value = channel_wise_kl(teacher, student, tau, weights.log())
    for b in range(2):
        w = weights[b].flatten().tolist()
        for k in range(3):
            def distribution(x, w=w, b=b, k=k):
                unnormalised = [wi * math.exp(v / tau) for wi, v in zip(w, x[b, k].flatten().tolist())]
                total = sum(unnormalised)
                return [u / total for u in unnormalised]

            p, q = distribution(teacher), distribution(student)
            kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
            assert value[b, k].item() == pytest.approx(tau**2 * kl, rel=1e-10)


def test_per_image_standardisation_is_the_formula_over_each_images_positions():
    feature = torch.randn(3, 4, 5, 6, dtype=torch.float64) * 2 + 1
    torch.testing.assert_close(channel_standardize(feature, over="image"), torch.from_numpy(_standardised(feature, "image")))
    # batch-independent: each image standardised alone gives the same map
    alone = torch.cat([channel_standardize(feature[i : i + 1], over="image") for i in range(3)])
    torch.testing.assert_close(alone, channel_standardize(feature, over="image"))
    with pytest.raises(ValueError, match="positions of one image"):
        channel_standardize(torch.randn(4, 2, 1, 1), over="image")
    with pytest.raises(ValueError, match="is not one of: batch, image"):
        channel_standardize(feature, over="channel")


# -------------------------------------------------------------------------------------------- diagnostics
def test_effective_support_is_the_exponentiated_entropy_share():
    masks = torch.rand(2, 3, 7, dtype=torch.float64)
    expected = 0.0
    for b in range(2):
        for m in range(3):
            row = masks[b, m].tolist()
            q = [v / sum(row) for v in row]
            expected += math.exp(-sum(p * math.log(p) for p in q)) / 7
    assert effective_support(masks).item() == pytest.approx(expected / 6, rel=1e-10)
    assert effective_support(torch.ones(1, 1, 9)).item() == pytest.approx(1.0)
    one_hot = torch.zeros(1, 1, 9)
    one_hot[0, 0, 4] = 1.0
    assert effective_support(one_hot).item() == pytest.approx(1 / 9)


def test_rank_correlation_is_spearmans_averaged_over_the_batch():
    weights, errors = torch.randn(3, 20), torch.randn(3, 20)
    expected = np.mean([spearmanr(weights[b].numpy(), errors[b].numpy()).statistic for b in range(3)])
    assert rank_correlation(weights, errors).item() == pytest.approx(expected, abs=1e-6)
    assert rank_correlation(torch.ones(1, 5), torch.rand(1, 5)).item() == 0.0


# -------------------------------------------------------------------------------------------- the loss module
def test_uniform_control_is_the_standardised_mean_squared_error_twice_with_no_fusion():
    student, teacher = _features()
    loss = ACAMKDLoss(8, 8, alignment="identity", imitation_standardize=True, alpha=0.5, mask_objective="uniform",
                      standardize_over="batch")
    assert loss.fusion is None and loss.masking is None and loss.masks(student, teacher) == {}
    out = loss(student, teacher)
    expected = ((_standardised(teacher) - _standardised(student)) ** 2).mean()
    assert out["channel"].item() == pytest.approx(expected, rel=1e-5)
    assert out["spatial"].item() == pytest.approx(expected, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * 2 * expected, rel=1e-5)
    spatial_only = ACAMKDLoss(8, 8, alignment="identity", imitation_standardize=True, mask_objective="uniform", standardize_over="batch",
                              mask_kinds="spatial")(student, teacher)
    assert spatial_only["channel"].item() == 0.0 and spatial_only["loss"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("objective", ["adversarial", "predictive", "task"])
@pytest.mark.parametrize("over", ["batch", "image"])
def test_budgeted_imitation_equals_the_formula_on_the_modules_masks(objective, over):
    torch.manual_seed(0)
    student, teacher = _features()
    loss = ACAMKDLoss(8, 8, num_masks=3, alignment="identity", imitation_standardize=True, mask_objective=objective,
                      standardize_over=over, mask_uniform_mix=0.4)
    with torch.no_grad():  # masks away from uniform, so the weighting matters
        loss.masking.spatial_units.normal_(0, 0.3)
        loss.masking.channel_bias.normal_(0, 0.3)
    out = loss(student, teacher)
    masks = {kind: value.detach().double().numpy() for kind, value in loss.masks(student, teacher).items()}
    np.testing.assert_allclose(masks["spatial"].sum(axis=(2, 3)), 60.0, rtol=1e-5)  # each sums to HW
    np.testing.assert_allclose(masks["channel"].sum(axis=2), 8.0, rtol=1e-5)  # ... and to C
    d2 = (_standardised(teacher, over) - _standardised(student, over)) ** 2  # (B, C, H, W)
    omega_s = 0.6 + 0.4 * masks["spatial"].mean(axis=1)  # (B, H, W)
    omega_c = 0.6 + 0.4 * masks["channel"].mean(axis=1)  # (B, C)
    assert out["spatial"].item() == pytest.approx(np.einsum("bhw,bchw->", omega_s, d2) / d2.size, rel=1e-5)
    assert out["channel"].item() == pytest.approx(np.einsum("bc,bchw->", omega_c, d2) / d2.size, rel=1e-5)
    assert 0 < out["spatial_mask_support"].item() < 1 and 0 < out["channel_mask_support"].item() < 1


@pytest.mark.parametrize("objective", ["adversarial", "predictive", "task"])
def test_the_imitation_never_reaches_the_masks_and_the_objective_never_reaches_the_student(objective):
    torch.manual_seed(0)
    student, teacher = _features()
    loss = ACAMKDLoss(8, 8, num_masks=3, imitation_standardize=True, mask_objective=objective)
    out = loss(student, teacher)
    mask_parameters = [*loss.masking.parameters(), *loss.fusion.parameters()]
    imitation = out["channel"] + out["spatial"]
    assert all(g is None for g in torch.autograd.grad(imitation, mask_parameters, allow_unused=True))
    gradients = torch.autograd.grad(out["loss"], mask_parameters, retain_graph=True, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in gradients)
    (from_total,) = torch.autograd.grad(out["loss"], student, retain_graph=True)
    (from_imitation,) = torch.autograd.grad(loss.alpha * (out["channel"] + out["spatial"]), student)
    torch.testing.assert_close(from_total, from_imitation)


def test_adversarial_ramp_counts_training_passes_and_is_checkpointed():
    student, teacher = _features()
    loss = ACAMKDLoss(8, 8, num_masks=2, mask_objective="adversarial", mask_ramp_steps=4)
    first = loss(student, teacher)["mask_objective"].item()
    assert 0.0 <= first < 0.01  # strength 0: only the KL to uniform (>= 0) of near-uniform masks, no gain term
    loss(student, teacher)
    loss.eval()
    loss(student, teacher)  # evaluation passes do not advance the ramp
    assert int(loss.state_dict()["mask_steps"]) == 2


def test_distribution_form_with_uniform_masks_is_cwd_in_both_terms_and_weights_it_with_masks():
    student, teacher = _features(channels=4, hw=(3, 4))
    out = ACAMKDLoss(4, 4, alignment="identity", mask_objective="uniform", imitation_form="distribution", imitation_standardize=False,
                     cwd_tau=2.0)(student, teacher)
    s, t = student.detach().double().numpy(), teacher.double().numpy()

    def log_softmax(x):  # over the positions of each (b, k)
        flat = x.reshape(*x.shape[:2], -1) / 2.0
        return flat - np.log(np.exp(flat).sum(axis=2, keepdims=True))

    p_t, lp_t, lp_s = np.exp(log_softmax(t)), log_softmax(t), log_softmax(s)
    cwd = 4.0 * (p_t * (lp_t - lp_s)).sum(axis=2).mean()
    assert out["spatial"].item() == pytest.approx(cwd, rel=1e-5)
    assert out["channel"].item() == pytest.approx(cwd, rel=1e-5)
    masked = ACAMKDLoss(4, 4, alignment="identity", mask_objective="predictive", imitation_form="distribution",
                        imitation_standardize=False)
    with torch.no_grad():
        masked.masking.channel_bias.normal_(0, 0.5)
    out = masked(student, teacher)
    weights = 0.5 + 0.5 * masked.masks(student, teacher)["channel"].detach().double().numpy().mean(axis=1)  # (B, C)
    per_channel = (np.exp(log_softmax(t * 2)) * (log_softmax(t * 2) - log_softmax(s * 2))).sum(axis=2)  # tau 1
    assert out["channel"].item() == pytest.approx((weights * per_channel).mean(), rel=1e-5)


def test_settings_refuse_what_no_loss_can_use():
    with pytest.raises(ValueError, match="--imitation_form distribution needs masks that the imitation does not train"):
        DistillationSettings(mask_objective="imitation", imitation_form="distribution")
    with pytest.raises(ValueError, match="--mask_uniform_mix must be in"):
        DistillationSettings(mask_uniform_mix=1.5)
    with pytest.raises(ValueError, match="--mask_objective .* is not one of"):
        DistillationSettings(mask_objective="shrink")
    settings = DistillationSettings(mask_objective="task").resolved(["stage2"], 4)
    with pytest.raises(ValueError, match="--mask_objective task .* needs --distillation_points logits, got stage2"):
        build_distillation_loss(settings, {"stage2": (8, 4, 4)}, {"stage2": (8, 4, 4)})
    assert build_distillation_loss(settings.__class__(**{**settings.to_dict(), "distillation_points": ["logits"]}),
                                   {"logits": (8, 4, 4)}, {"logits": (8, 4, 4)}) is not None


def test_per_image_statistics_make_the_mse_imitation_independent_of_the_batch_split():
    student, teacher = _features(batch=4)
    for over, independent in (("image", True), ("batch", False)):
        loss = FeatureMSELoss(8, 8, alignment="identity", standardize=True, standardize_over=over)
        whole = loss(student, teacher)["mse"]
        halves = (loss(student[:2], teacher[:2])["mse"] + loss(student[2:], teacher[2:])["mse"]) / 2
        assert torch.isclose(whole, halves, rtol=1e-5).item() is independent, over


# -------------------------------------------------------------------------------------------- cannot collapse
def _train_masks(objective, steps=200, **options):
    """Adam steps of the fusion and the selection units alone on a fixed pair of features whose error is larger
    in one corner (the imitation terms + the objective): what the masks become."""
    torch.manual_seed(0)
    loss = ACAMKDLoss(8, 8, num_masks=4, alignment="identity", imitation_standardize=True, mask_objective=objective,
                      mask_ramp_steps=20, **options)
    teacher = torch.randn(2, 8, 6, 6)
    student = teacher + 0.3 * torch.randn(2, 8, 6, 6)
    student[:, :, :3, :3] += 2 * torch.randn(2, 8, 3, 3)  # the student lags in one corner
    parameters = [p for module in (loss.fusion, loss.masking) if module is not None for p in module.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        out = loss(student, teacher)
        out["loss"].backward()
        optimizer.step()
    return loss(student, teacher)


def test_imitation_trained_masks_collapse_and_the_learned_objectives_masks_stay_spread_and_look_where_the_error_is():
    collapsed = _train_masks("imitation")
    assert collapsed["spatial_mask_mean"].item() < 0.05  # the paper's masks shrink (the test can fail)
    for objective in ("adversarial", "predictive", "task"):
        out = _train_masks(objective)
        assert out["spatial_mask_mean"].item() == pytest.approx(1.0, rel=1e-5), objective  # budget: never shrinks
        assert out["channel_mask_mean"].item() == pytest.approx(1.0, rel=1e-5), objective
        assert out["spatial_mask_support"].item() > 0.2, objective  # spread: no single position takes the weight
        assert out["channel_mask_support"].item() > 0.2, objective
        if objective != "task":  # the task objective reads the teacher's decision, not the student's error
            assert out["spatial_error_rank_corr"].item() > 0.3, objective
