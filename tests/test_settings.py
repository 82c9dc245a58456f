"""The distillation settings object: one home for every option, resolved once, read whole by the losses."""

from dataclasses import fields

import pytest
import torch

from acamkd_hf.config import DistillationArguments
from acamkd_hf.losses import DISTILLATION_LOSSES
from acamkd_hf.settings import ACAMKD_VARIANTS, DEFAULT_ALPHA, DETECTION_NUM_MASKS, METHODS, DistillationSettings


def test_methods_name_every_loss_and_every_loss_has_a_default_weight():
    assert set(METHODS) == set(DISTILLATION_LOSSES) | {"none"}
    assert set(DEFAULT_ALPHA) == set(DISTILLATION_LOSSES) - {"acamkd"}
    for method in DISTILLATION_LOSSES:
        resolved = DistillationSettings(method=method).resolved(["logits"], num_masks=2)
        assert resolved.alpha is not None and resolved.alpha > 0, method
        assert all(value is not None for value in resolved.to_dict().values()), method


def test_paper_variant_is_the_spec_and_explicit_flags_win_over_the_variant():
    paper = DistillationSettings(acamkd_variant="paper").resolved(["logits"], num_masks=19)
    assert (paper.alpha, paper.lambda_div, paper.mask_normalizer, paper.mask_activation) == (1.0, 1.0, "sum", "sigmoid")
    assert (paper.detach_masks_in_imitation, paper.imitation_standardize) == (False, False)
    assert (paper.fusion_mode, paper.detach_student_in_fusion, paper.num_masks) == ("teacher_query", True, 19)
    mixed = DistillationSettings(acamkd_variant="paper", mask_normalizer="sum_sq", alpha=0.5).resolved(["x"], 2)
    assert (mixed.mask_normalizer, mixed.alpha, mixed.mask_activation) == ("sum_sq", 0.5, "sigmoid")
    assert set(ACAMKD_VARIANTS) == {"paper", "recommended"}
    assert paper.fusion_kv_reduction == "1"  # the paper's exact fusion
    recommended = DistillationSettings().resolved(["logits"], num_masks=19)  # what --method acamkd uses
    assert (recommended.imitation_standardize, recommended.fusion_kv_reduction) == (True, "auto")
    assert (recommended.alpha, recommended.mask_normalizer, recommended.mask_activation) == (1.0, "sum", "sigmoid")
    assert (recommended.mask_objective, recommended.standardize_over) == ("adversarial", "image")  # the mask study's
    assert (paper.mask_objective, paper.standardize_over) == ("imitation", "batch")  # the paper's reading
    loss = DISTILLATION_LOSSES["acamkd"].from_settings(8, 8, paper)
    assert (loss.imitation_standardize, loss.fusion.kv_reduction, loss.mask_normalizer) == (False, "1", "sum")


def test_every_setting_is_a_flag_of_the_distillation_help_group_with_the_same_default(tmp_path):
    """Each setting is listed by ``--help`` under the distillation group, with a help text, and the arguments'
    defaults are the settings' own."""
    from acamkd_hf.arguments import build_parser

    parser = build_parser()
    group = next(group for group in parser._action_groups if group.title.startswith("How the teacher teaches"))
    listed = {action.dest: action.help for action in group._group_actions}
    for item in fields(DistillationSettings):
        assert listed.get(item.name), f"--{item.name} is not in the distillation group of --help, or has no help"
    assert DistillationArguments(output_dir=str(tmp_path)).distillation_settings() == DistillationSettings()


def test_resolved_fills_only_what_was_not_given():
    resolved = DistillationSettings(method="mgd").resolved(["neck1", "neck2"], num_masks=6)
    assert (resolved.alpha, resolved.num_masks, resolved.distillation_points) == (2e-5, 6, ["neck1", "neck2"])
    given = DistillationSettings(method="acamkd", alpha=0.25, num_masks=3).resolved(["logits"], num_masks=19)
    assert (given.alpha, given.num_masks) == (0.25, 3)
    assert DistillationSettings().alpha is None  # the unresolved object is untouched


def test_losses_are_built_from_the_whole_settings_object():
    settings = DistillationSettings(method="cwd", cwd_tau=4.0, alpha=0.5).resolved(["logits"], num_masks=2)
    loss = DISTILLATION_LOSSES["cwd"].from_settings(3, 5, settings)
    assert (loss.tau, loss.weight) == (4.0, 0.5)
    settings = DistillationSettings(
        mask_normalizer="sum_sq", lambda_div=0.5, mask_activation="softmax", imitation_standardize=True
    ).resolved(["logits"], num_masks=4)
    loss = DISTILLATION_LOSSES["acamkd"].from_settings(3, 8, settings)
    assert (loss.mask_normalizer, loss.lambda_div, loss.masking.num_masks) == ("sum_sq", 0.5, 4)
    assert (loss.masking.activation, loss.imitation_standardize) == ("softmax", True)
    mse = DISTILLATION_LOSSES["mse"].from_settings(3, 8, DistillationSettings(method="mse", imitation_standardize=True).resolved(["x"], 2))
    assert mse.standardize
    settings = DistillationSettings(fusion_kv_reduction="auto", fusion_max_kv_tokens=64).resolved(["logits"], num_masks=4)
    loss = DISTILLATION_LOSSES["acamkd"].from_settings(3, 8, settings)
    assert (loss.fusion.kv_reduction, loss.fusion.max_kv_tokens) == ("auto", 64)


@pytest.mark.parametrize(
    "changes,message",
    [({"method": "kd"}, "--method 'kd'"), ({"num_masks": 0}, "--num_masks"), ({"mgd_mask_ratio": 1.0}, "--mgd_mask_ratio"),
     ({"mask_normalizer": "max"}, "--mask_normalizer"), ({"fusion_kv_reduction": "fast"}, "--fusion_kv_reduction"),
     ({"fusion_kv_reduction": "auto", "fusion_max_kv_tokens": 0}, "--fusion_max_kv_tokens")],
)
def test_bad_values_are_refused_when_the_settings_are_made(changes, message):
    with pytest.raises(ValueError, match=message):
        DistillationSettings(**changes)


def test_a_record_without_the_newer_settings_means_what_the_code_did_then():
    """A checkpoint written before a setting existed trained as that setting's 'before' value: with today's
    defaults it resumes; against a run that changes one of those settings it is a difference, named."""
    record = {"method": "acamkd", "alpha": None, "lambda_div": 1.0, "mask_normalizer": "sum",
              "detach_masks_in_imitation": False, "num_masks": None, "distillation_points": None}
    old = DistillationSettings.from_record(record)
    assert (old.acamkd_variant, old.mask_activation, old.imitation_standardize, old.fusion_kv_reduction) == (
        "paper", "sigmoid", False, "1")
    assert old.differences(DistillationSettings(acamkd_variant="paper")) == {}
    assert old.differences(DistillationSettings(acamkd_variant="paper", mask_activation="softmax")) == {
        "mask_activation": ("sigmoid", "softmax")}
    assert DistillationSettings(method="cwd").differences(DistillationSettings(method="cwd", cwd_tau=4.0)) == {
        "cwd_tau": (1.0, 4.0)}


def test_the_token_budget_differs_only_where_auto_reduction_reads_it():
    """--fusion_max_kv_tokens is the budget of ACAM-KD's 'auto' reduction: a run with an exact (or fixed-R)
    fusion, or a baseline, trains the same whatever budget it recorded; under 'auto' a different budget is named."""
    for method, reduction in (("acamkd", "1"), ("acamkd", "4"), ("mse", None), ("pkd", None)):
        a = DistillationSettings(method=method, fusion_kv_reduction=reduction, fusion_max_kv_tokens=1024)
        b = DistillationSettings(method=method, fusion_kv_reduction=reduction, fusion_max_kv_tokens=32)
        assert a.differences(b) == {}, (method, reduction)
    auto_a = DistillationSettings(method="acamkd", fusion_max_kv_tokens=128)  # the recommended variant: auto
    assert auto_a.differences(DistillationSettings(method="acamkd", fusion_max_kv_tokens=32)) == {
        "fusion_max_kv_tokens": (128, 32)}


@pytest.mark.parametrize("method", list(DISTILLATION_LOSSES))
def test_the_python_api_builds_the_method_the_command_line_builds(tmp_path, method):
    """``Loss(C_s, C_t)`` with its defaults is what ``--method <method>`` builds: every keyword's default equals the
    setting the CLI resolves, and the two modules (same seed) hold the same weights and give the same loss."""
    import inspect

    from acamkd_hf.arguments import parse_arguments

    cli_settings = parse_arguments(["--output_dir", str(tmp_path), "--method", method])[2].distillation_settings()
    cli_settings = cli_settings.resolved(["logits"], num_masks=DETECTION_NUM_MASKS)
    loss_class = DISTILLATION_LOSSES[method]
    parameters = inspect.signature(loss_class).parameters
    assert set(loss_class.SETTINGS) <= set(parameters)  # every keyword it declares is one of its constructor's
    for keyword, setting in loss_class.SETTINGS.items():
        assert parameters[keyword].default == getattr(cli_settings, setting), (keyword, setting)
    torch.manual_seed(0)
    from_python = loss_class(6, 8)
    torch.manual_seed(0)
    from_cli = loss_class.from_settings(6, 8, cli_settings)
    python_state, cli_state = from_python.state_dict(), from_cli.state_dict()
    assert python_state.keys() == cli_state.keys()
    for name in python_state:
        assert torch.equal(python_state[name], cli_state[name]), name
    student, teacher = torch.randn(2, 6, 8, 8), torch.randn(2, 8, 8, 8)
    torch.manual_seed(1)
    expected = from_cli(student, teacher)["loss"]
    torch.manual_seed(1)
    assert torch.equal(from_python(student, teacher)["loss"], expected)


@pytest.mark.parametrize("method", list(DISTILLATION_LOSSES))
def test_a_run_records_only_the_settings_its_method_reads(method):
    from acamkd_hf.distiller import COMMON_RECORDED_SETTINGS, recorded_settings

    settings = DistillationSettings(method=method).resolved(["logits"], num_masks=3)
    record = recorded_settings(settings)
    expected = set(COMMON_RECORDED_SETTINGS) | set(DISTILLATION_LOSSES[method].SETTINGS.values())
    expected |= {"acamkd_variant"} if method == "acamkd" else set()
    assert set(record) == expected
    assert ("mask_normalizer" in record) == (method == "acamkd")
    assert all(record[name] == getattr(settings, name) for name in record)
