"""The feature-tap contract, tested the same way across every supported family (as timm tests features_only):
point names, probe shapes == collected shapes, "logits" == outputs.logits, stage maps == an independent
recomputation of the backbone prefix, backward through the taps, error messages, hook removal, wrapping (a plain
nn.Module and DDP), in-place detection, and teacher hygiene."""

import pytest
import torch
from torch import nn
from transformers import ConvNextConfig

from acamkd_hf.models import SEGMENTATION_PRESETS
from acamkd_hf.taps import FeatureTaps, available_points, freeze_teacher, probe_feature_shapes

ID2LABEL = {i: f"class{i}" for i in range(5)}
SIZE = (64, 128)
STAGES = ["stage1", "stage2", "stage3", "stage4"]
ALL = ["logits", *STAGES]

# (C, H, W) for a 64x128 input, worked out from each architecture: tiny timm ResNet-18 16/32/64/128 at OS 8
# (stage1 1/4, stages 2-4 1/8); timm MobileNetV2 x0.35 (24/32/96/320 x 0.35 rounded to multiples of 8: 8/16/32/112)
# at OS 8; SegFormer 1/4..1/32 with 16..128 channels, logits at 1/4; transformers MobileNetV2 x0.35 at OS 8 (same
# widths as timm's); UperNet on a 16..128 ResNet (1/4..1/32), logits upsampled to the input.
EXPECTED_SHAPES = {
    "tiny-deeplabv3-resnet": [(5, 8, 16), (16, 16, 32), (32, 8, 16), (64, 8, 16), (128, 8, 16)],
    "tiny-deeplabv3-mobilenetv2-timm": [(5, 8, 16), (8, 16, 32), (16, 8, 16), (32, 8, 16), (112, 8, 16)],
    "tiny-segformer": [(5, 16, 32), (16, 16, 32), (32, 8, 16), (64, 4, 8), (128, 2, 4)],
    "tiny-mobilenetv2-hf-deeplabv3": [(5, 8, 16), (8, 16, 32), (16, 8, 16), (32, 8, 16), (112, 8, 16)],
    "tiny-upernet": [(5, 64, 128), (16, 16, 32), (32, 8, 16), (64, 4, 8), (128, 2, 4)],
}
FAMILIES = list(EXPECTED_SHAPES)




def _build(name, **overrides):
    torch.manual_seed(0)
    return SEGMENTATION_PRESETS[name](ID2LABEL, **overrides)


def _x(batch=2, seed=0):
    return torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _prefix_reference(name, model, x):
    """Stage maps recomputed by running only the backbone prefix (nothing after a stage runs, so no later in-place
    op can touch them). Returns [stage1, ..., stage4]."""
    if name.startswith("tiny-deeplabv3"):
        return list(model.backbone(x))
    if name == "tiny-segformer":
        maps, h = [], x
        for stage in model.segformer.stages:
            h = stage(h)
            maps.append(h)
        return maps
    if name == "tiny-mobilenetv2-hf-deeplabv3":
        maps, h = [], model.mobilenet_v2.conv_stem(x)
        for i, layer in enumerate(model.mobilenet_v2.layer):
            h = layer(h)
            if i in (1, 4, 11, 15):  # last layer of the 24/32/96/320-channel groups
                maps.append(h)
        return maps
    if name == "tiny-upernet":
        return list(model.backbone(x).feature_maps)
    raise AssertionError(name)


def _hidden_state_reference(name, outputs):
    """The same maps from transformers' own output_hidden_states (index layout differs per family)."""
    hidden = outputs.hidden_states
    if name.startswith("tiny-deeplabv3") or name == "tiny-segformer":
        return list(hidden)
    if name == "tiny-mobilenetv2-hf-deeplabv3":
        return [hidden[i] for i in (1, 4, 11, 15)]
    if name == "tiny-upernet":
        return list(hidden[1:])  # hidden[0] is the ResNet embedder output
    raise AssertionError(name)


@pytest.mark.parametrize("name", FAMILIES)
def test_available_points(name):
    assert available_points(_build(name)) == ALL


@pytest.mark.parametrize("name", FAMILIES)
def test_probe_shapes_equal_collected_shapes_and_expected(name):
    model = _build(name).train()
    probed = probe_feature_shapes(model, ALL, SIZE)
    assert list(probed.values()) == EXPECTED_SHAPES[name]
    assert model.training  # restored
    taps = FeatureTaps(model, ALL)
    outputs = model(pixel_values=_x())
    collected = taps.collect(outputs)
    assert list(collected) == ALL
    assert {k: tuple(v.shape[1:]) for k, v in collected.items()} == probed
    assert all(v.shape[0] == 2 for v in collected.values())
    assert collected["logits"] is outputs.logits


@pytest.mark.parametrize("name", FAMILIES)
def test_stage_taps_equal_independent_references(name):
    model = _build(name).eval()
    x = _x()
    taps = FeatureTaps(model, STAGES)
    with torch.no_grad():
        outputs = model(pixel_values=x, output_hidden_states=True)
        tapped = taps.collect(outputs)
        prefix = _prefix_reference(name, model, x)
    hidden = _hidden_state_reference(name, outputs)
    assert len(prefix) == len(hidden) == 4
    for stage, ref_prefix, ref_hidden in zip(STAGES, prefix, hidden):
        assert torch.equal(tapped[stage], ref_prefix), stage
        assert torch.equal(tapped[stage], ref_hidden), stage


@pytest.mark.parametrize("name", FAMILIES)
def test_student_backward_through_taps_in_train_mode(name):
    # The student path: train mode, task loss + a loss on every tapped map. An in-place op on a tapped tensor would
    # raise "one of the variables needed for gradient computation has been modified by an inplace operation".
    model = _build(name).train()
    taps = FeatureTaps(model, ALL)
    labels = torch.randint(0, 5, (2, *SIZE))
    outputs = model(pixel_values=_x(), labels=labels)
    features = taps.collect(outputs)
    kd = sum(feature.pow(2).mean() for feature in features.values())
    (outputs.loss + kd).backward()
    assert all(feature.requires_grad for feature in features.values())
    stem = next(model.parameters())  # the first conv of the backbone
    assert stem.grad is not None and stem.grad.abs().sum() > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_stage_feature_gradient_reaches_only_the_prefix(name):
    # A loss on stage1 alone must give gradient to the backbone's first parameters and none to the decode head:
    # proves the hook returns the live, differentiable stage output (not a detached copy, not the head's input).
    model = _build(name).train()
    taps = FeatureTaps(model, ["stage1"])
    model(pixel_values=_x())
    taps.collect()["stage1"].pow(2).mean().backward()
    first = next(p for p in model.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    head = model.decode_head if hasattr(model, "decode_head") else model.segmentation_head
    assert all(p.grad is None for p in head.parameters())


@pytest.mark.parametrize("name", FAMILIES)
def test_unknown_point_error_lists_available_names(name):
    model = _build(name)
    with pytest.raises(ValueError) as info:
        FeatureTaps(model, ["logits", "stage9"])
    assert str(info.value) == (
        f"Unknown distillation point 'stage9' for {type(model).__name__}; "
        "available: logits, stage1, stage2, stage3, stage4; or any submodule, module:PATH"
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_remove_removes_every_hook(name):
    model = _build(name)
    before = sum(len(m._forward_hooks) for m in model.modules())
    taps = FeatureTaps(model, ALL)
    assert sum(len(m._forward_hooks) for m in model.modules()) > before
    taps.remove()
    assert sum(len(m._forward_hooks) for m in model.modules()) == before
    with torch.no_grad():
        outputs = model.eval()(pixel_values=_x())
    with pytest.raises(RuntimeError, match="was not recorded"):
        taps.collect(outputs)


class _Wrapper(nn.Module):
    """Stands in for the Distiller: the student is a child module, called through the wrapper's forward."""

    def __init__(self, student):
        super().__init__()
        self.student = student
        self.extra = nn.Conv2d(1, 1, 1)

    def forward(self, pixel_values):
        return self.student(pixel_values=pixel_values)


@pytest.mark.parametrize("name", FAMILIES)
def test_taps_fire_through_a_wrapping_module(name):
    model = _build(name).eval()
    taps = FeatureTaps(model, ALL)  # registered before wrapping, as the Distiller will do
    wrapper = _Wrapper(model)
    x = _x()
    with torch.no_grad():
        outputs = wrapper(x)
        features = taps.collect(outputs)
        reference = _prefix_reference(name, model, x)
    assert features["logits"] is outputs.logits
    for stage, ref in zip(STAGES, reference):
        assert torch.equal(features[stage], ref)


def test_taps_fire_under_ddp(tmp_path):
    import torch.distributed as dist

    model = _build("tiny-deeplabv3-mobilenetv2-timm").train()
    taps = FeatureTaps(model, ["logits", "stage3"])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        outputs = ddp(pixel_values=_x())
        features = taps.collect(outputs)
        assert features["stage3"].shape == (2, 32, 8, 16)
        (outputs.logits.mean() + features["stage3"].pow(2).mean()).backward()
        assert next(model.parameters()).grad is not None
    finally:
        dist.destroy_process_group()


def test_collect_order_follows_points_and_clears():
    model = _build("tiny-segformer").eval()
    taps = FeatureTaps(model, ["stage3", "logits", "stage1"])
    with torch.no_grad():
        outputs = model(pixel_values=_x())
    assert list(taps.collect(outputs)) == ["stage3", "logits", "stage1"]
    with pytest.raises(RuntimeError, match="was not recorded"):
        taps.collect(outputs)  # stored tensors were cleared by the first collect


def test_collect_logits_needs_outputs():
    model = _build("tiny-upernet").eval()
    taps = FeatureTaps(model, ["logits"])
    with torch.no_grad():
        model(pixel_values=_x())
    with pytest.raises(ValueError, match="needs the model outputs"):
        taps.collect()


def test_in_place_change_of_a_tapped_tensor_is_detected():
    model = _build("tiny-deeplabv3-resnet").eval()
    taps = FeatureTaps(model, ["stage2"])
    # A hook registered after ours that modifies the stage output in place, as an in-place ReLU / `+=` would.
    def in_place(module, args, output):
        output[1].mul_(2.0)  # returns None: the output list itself is kept

    model.backbone.register_forward_hook(in_place)
    with torch.no_grad():
        outputs = model(pixel_values=_x())
    with pytest.raises(RuntimeError, match="modified in place"):
        taps.collect(outputs)


def test_duplicate_or_empty_points_rejected():
    model = _build("tiny-segformer")
    with pytest.raises(ValueError, match="more than once: stage1"):
        FeatureTaps(model, ["stage1", "stage1"])
    with pytest.raises(ValueError, match="No distillation points"):
        FeatureTaps(model, [])


def test_unknown_family_error_names_class_and_supported():
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    assert available_points(model) == []  # no family entry and not a semantic segmenter: only module: points
    with pytest.raises(ValueError) as info:
        FeatureTaps(model, ["stage1"])
    message = str(info.value)
    assert "Sequential" in message and "module:PATH" in message
    for supported in [
        "DeepLabV3ForSemanticSegmentation",
        "SegformerForSemanticSegmentation",
        "MobileNetV2ForSemanticSegmentation",
        "UperNetForSemanticSegmentation",
    ]:
        assert supported in message


def test_upernet_convnext_taps_the_normed_feature_maps_the_head_uses():
    # ConvNeXt backbones layer-norm each stage output into `feature_maps`; the taps must give what the UperNet
    # heads consume (the backbone's feature maps), not the raw stage outputs.
    backbone_config = ConvNextConfig(
        hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"]
    )
    model = _build("tiny-upernet", backbone_config=backbone_config).eval()
    assert available_points(model) == ALL
    taps = FeatureTaps(model, STAGES)
    x = _x()
    with torch.no_grad():
        outputs = model(pixel_values=x, output_hidden_states=True)
        tapped = taps.collect(outputs)
        feature_maps = model.backbone(x).feature_maps
    for stage, ref, raw in zip(STAGES, feature_maps, outputs.hidden_states[1:]):
        assert torch.equal(tapped[stage], ref)
        assert not torch.equal(tapped[stage], raw)  # the raw stage output differs by the layer norm


def test_probe_restores_per_module_modes_and_leaves_no_grad_or_hooks():
    model = _build("tiny-deeplabv3-resnet").train()
    model.backbone.layer1.eval()  # e.g. a frozen-BN part of a student
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    running_mean = model.backbone.bn1.running_mean.clone() if hasattr(model.backbone, "bn1") else None
    probe_feature_shapes(model, ["stage1"], (32, 32))
    assert model.training and model.decode_head.training and not model.backbone.layer1.training
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
    assert all(p.grad is None for p in model.parameters())
    if running_mean is not None:
        assert torch.equal(model.backbone.bn1.running_mean, running_mean)  # ran in eval mode


def test_freeze_teacher():
    teacher = _build("tiny-deeplabv3-resnet").train()
    assert freeze_teacher(teacher) is teacher
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    bn = next(m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    taps = FeatureTaps(teacher, ALL)
    outputs = teacher(pixel_values=_x())
    features = taps.collect(outputs)
    assert torch.equal(bn.running_mean, before)  # BatchNorm statistics untouched
    assert not any(f.requires_grad for f in features.values())


def test_probe_does_not_move_the_global_rng():
    """Building a trainer probes shapes; that must not shift the run's random stream (seeded runs, exact resume)."""
    from acamkd_hf.models.segmentation import SEGMENTATION_PRESETS

    model = SEGMENTATION_PRESETS["tiny-segformer"]({0: "a", 1: "b"})
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    probe_feature_shapes(model, ["logits", "stage2"], (32, 64))
    torch.testing.assert_close(torch.rand(3), expected)
