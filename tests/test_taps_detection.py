"""The feature-tap contract for detectors (every family's tiny presets), tested like tests/test_taps.py does for
segmenters: point names, probe shapes == collected shapes == shapes worked out by hand, tapped maps == an
independent recomputation (and the model's own return values where it has them), taps through a wrapping module
called like the Distiller calls the student (pixel_mask + list-of-dict labels), backward without in-place errors,
gradient of a neck loss reaching only the prefix, and error messages."""

import pytest
import torch
from torch import nn

from acamkd_hf.models import DETECTION_PRESETS
from acamkd_hf.taps import FeatureTaps, available_points, freeze_teacher, probe_feature_shapes

ID2LABEL = {0: "square", 1: "ellipse", 2: "triangle"}
SIZE = (128, 128)

# (C, H, W) at 128x128, worked out from each architecture. DETR, Conditional DETR, DAB-DETR: d_model 64 projection of
# the stride-32 map; stages at strides 4..32 of ResNets 32/64/128/256 (teacher) and 16/32/48/64 (student). RT-DETR,
# RT-DETRv2, D-FINE, DEIMv2: 64-wide PAN outputs at strides 8/16/32; backbone stages 2-4 (ResNet-vd or HGNetV2 of the
# same widths). Deformable DETR: d_model 64 projections of stages 2-4 (strides 8/16/32) plus one stride-2 conv level
# (stride 64). LW-DETR: the projector's 64-wide maps at scales 2 and 0.5 of the stride-16 patch grid (strides 8, 32);
# RF-DETR: its one 64-wide projector map at the patch stride 16. The ViTs offer no stage points.
_DETR_LIKE = {
    "teacher": {"neck1": (64, 4, 4), "stage1": (32, 32, 32), "stage2": (64, 16, 16), "stage3": (128, 8, 8),
                "stage4": (256, 4, 4)},
    "student": {"neck1": (64, 4, 4), "stage1": (16, 32, 32), "stage2": (32, 16, 16), "stage3": (48, 8, 8),
                "stage4": (64, 4, 4)},
}
_REALTIME = {
    "teacher": {"neck1": (64, 16, 16), "neck2": (64, 8, 8), "neck3": (64, 4, 4),
                "stage2": (64, 16, 16), "stage3": (128, 8, 8), "stage4": (256, 4, 4)},
    "student": {"neck1": (64, 16, 16), "neck2": (64, 8, 8), "neck3": (64, 4, 4),
                "stage2": (32, 16, 16), "stage3": (48, 8, 8), "stage4": (64, 4, 4)},
}
_DEFORMABLE_NECKS = {"neck1": (64, 16, 16), "neck2": (64, 8, 8), "neck3": (64, 4, 4), "neck4": (64, 2, 2)}
EXPECTED = {
    "tiny-detr-resnet": _DETR_LIKE["teacher"],
    "tiny-detr-resnet-student": _DETR_LIKE["student"],
    "tiny-conditional-detr": _DETR_LIKE["teacher"],
    "tiny-conditional-detr-student": _DETR_LIKE["student"],
    "tiny-dab-detr": _DETR_LIKE["teacher"],
    "tiny-dab-detr-student": _DETR_LIKE["student"],
    "tiny-rtdetr-resnet": _REALTIME["teacher"],
    "tiny-rtdetr-resnet-student": _REALTIME["student"],
    "tiny-rtdetrv2": _REALTIME["teacher"],
    "tiny-rtdetrv2-student": _REALTIME["student"],
    "tiny-dfine": _REALTIME["teacher"],
    "tiny-dfine-student": _REALTIME["student"],
    "tiny-deimv2": _REALTIME["teacher"],
    "tiny-deimv2-student": _REALTIME["student"],
    "tiny-deformable-detr": {**_DEFORMABLE_NECKS, "stage2": (64, 16, 16), "stage3": (128, 8, 8), "stage4": (256, 4, 4)},
    "tiny-deformable-detr-student": {**_DEFORMABLE_NECKS, "stage2": (32, 16, 16), "stage3": (48, 8, 8),
                                     "stage4": (64, 4, 4)},
    "tiny-lwdetr": {"neck1": (64, 16, 16), "neck2": (64, 4, 4)},
    "tiny-lwdetr-student": {"neck1": (64, 16, 16), "neck2": (64, 4, 4)},
    "tiny-rfdetr": {"neck1": (64, 8, 8)},
    "tiny-rfdetr-student": {"neck1": (64, 8, 8)},
}
PRESETS = list(EXPECTED)


def _build(name, **overrides):
    torch.manual_seed(0)
    return DETECTION_PRESETS[name](ID2LABEL, **overrides)


def _x(batch=2, seed=0):
    return torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _pixel_mask(batch=2):
    mask = torch.ones(batch, *SIZE, dtype=torch.long)
    mask[1, :, 96:] = 0  # the second image padded on the right, as a collator would
    return mask


def _labels(batch=2):
    return [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.25], [0.7, 0.6, 0.3, 0.2]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ][:batch]


def _necks(name):
    return [p for p in EXPECTED[name] if p.startswith("neck")]


def _kind(name):
    return name.removeprefix("tiny-").removesuffix("-student").removesuffix("-resnet")


def _backbone_path(name):
    """The tiny preset's transformers backbone (a BackboneOutput of (B, C, H, W) feature_maps)."""
    paths = {"deimv2": "model.conv_encoder.model", "dab-detr": "model.backbone.conv_encoder.model",
             "lwdetr": "model.backbone.backbone", "rfdetr": "model.backbone.backbone"}
    return paths.get(_kind(name), "model.backbone.model")


def _references(name, model, x):
    """Every point recomputed outside the model's forward, from its submodules: {point: tensor}."""
    base, kind = model.model, _kind(name)
    if kind in ("lwdetr", "rfdetr"):  # the ViT's selected layers, then the projector (LW-DETR: one per scale)
        layers = base.backbone.backbone(x).feature_maps
        if kind == "rfdetr":
            return {"neck1": base.backbone.projector(layers)}
        return {f"neck{i + 1}": scale(layers) for i, scale in enumerate(base.backbone.projector.scale_layers)}
    maps = list(model.get_submodule(_backbone_path(name))(x).feature_maps)  # ResNet, ResNet-vd or HGNetV2
    stages = [p for p in EXPECTED[name] if p.startswith("stage")]
    reference = dict(zip(stages, maps))
    if kind in ("rtdetr", "rtdetrv2", "dfine", "deimv2"):
        projections = base.conv_encoder.encoder_input_proj if kind == "deimv2" else base.encoder_input_proj
        encoded = base.encoder([proj(feature) for proj, feature in zip(projections, maps)])
        pan = encoded.feature_maps if kind == "deimv2" else encoded.last_hidden_state
        reference.update({f"neck{i + 1}": level for i, level in enumerate(pan)})
    elif kind == "deformable-detr":
        levels = [proj(feature) for proj, feature in zip(base.input_proj, maps)]
        levels.append(base.input_proj[len(maps)](maps[-1]))  # the extra level reads the last backbone map
        reference.update({f"neck{i + 1}": level for i, level in enumerate(levels)})
    else:
        reference["neck1"] = base.input_projection(maps[-1])  # DETR, Conditional / DAB-DETR: only the last map
    return reference


@pytest.mark.parametrize("name", PRESETS)
def test_available_points(name):
    assert available_points(_build(name)) == list(EXPECTED[name])


@pytest.mark.parametrize("name", PRESETS)
def test_probe_shapes_equal_collected_shapes_and_expected(name):
    model = _build(name).train()
    points = list(EXPECTED[name])
    probed = probe_feature_shapes(model, points, SIZE)
    assert probed == EXPECTED[name]
    assert model.training  # restored
    taps = FeatureTaps(model, points)
    outputs = model(pixel_values=_x(), pixel_mask=_pixel_mask(), labels=_labels())
    collected = taps.collect(outputs)
    assert list(collected) == points
    assert {k: tuple(v.shape[1:]) for k, v in collected.items()} == probed
    assert all(v.shape[0] == 2 and v.dim() == 4 for v in collected.values())


@pytest.mark.parametrize("name", PRESETS)
def test_taps_equal_independent_references(name):
    model = _build(name).eval()
    x = _x()
    taps = FeatureTaps(model, list(EXPECTED[name]))
    with torch.no_grad():
        outputs = model(pixel_values=x)
        tapped = taps.collect(outputs)
        reference = _references(name, model, x)
    assert set(reference) == set(tapped)
    for point, ref in reference.items():
        torch.testing.assert_close(tapped[point], ref, rtol=1e-5, atol=1e-6, msg=point)
    if _kind(name) in ("rtdetr", "rtdetrv2", "dfine"):  # they return their PAN maps: the taps must be those tensors
        for i, level in enumerate(outputs.encoder_last_hidden_state):
            assert torch.equal(tapped[f"neck{i + 1}"], level)


class _Wrapper(nn.Module):
    """Stands in for the Distiller: the student is a child module, called with pixel_mask and detection labels."""

    def __init__(self, student):
        super().__init__()
        self.student = student
        self.extra = nn.Conv2d(1, 1, 1)

    def forward(self, pixel_values, pixel_mask=None, labels=None):
        return self.student(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)


@pytest.mark.parametrize("name", PRESETS)
def test_taps_fire_through_a_wrapping_module(name):
    model = _build(name).eval()
    taps = FeatureTaps(model, list(EXPECTED[name]))  # registered before wrapping, as the Distiller does
    wrapper = _Wrapper(model)
    x = _x()
    with torch.no_grad():
        features = taps.collect(wrapper(x, pixel_mask=_pixel_mask()))
        reference = _references(name, model, x)
    for point, ref in reference.items():
        # the conv backbones and the projections ignore the pixel mask
        torch.testing.assert_close(features[point], ref, rtol=1e-5, atol=1e-6, msg=point)


@pytest.mark.parametrize("name", PRESETS)
def test_student_backward_through_taps_in_train_mode(name):
    # Task loss + a loss on every tapped map, in train mode with labels (RT-DETR adds denoising queries): an in-place
    # op on a tapped tensor would raise "one of the variables needed for gradient computation has been modified".
    model = _build(name).train()
    taps = FeatureTaps(model, list(EXPECTED[name]))
    outputs = _Wrapper(model)(_x(), pixel_mask=_pixel_mask(), labels=_labels())
    features = taps.collect(outputs)
    assert torch.isfinite(outputs.loss)
    (outputs.loss + sum(feature.pow(2).mean() for feature in features.values())).backward()
    assert all(feature.requires_grad for feature in features.values())
    stem = next(model.get_submodule(_backbone_path(name)).parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0


@pytest.mark.parametrize("name", PRESETS)
def test_neck_gradient_reaches_only_the_prefix(name):
    # A loss on the finest neck level alone must reach the backbone and nothing after the neck (the decoder): the hook
    # returns the live neck output, not a detached copy and not something computed later.
    model = _build(name).train()
    taps = FeatureTaps(model, ["neck1"])
    model(pixel_values=_x())
    taps.collect()["neck1"].pow(2).mean().backward()
    stem = next(model.get_submodule(_backbone_path(name)).parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.decoder.parameters())


@pytest.mark.parametrize("name", PRESETS)
def test_unknown_point_error_lists_available_names(name):
    model = _build(name)
    with pytest.raises(ValueError) as info:
        FeatureTaps(model, ["neck1", "neck9"])
    assert str(info.value) == (
        f"Unknown distillation point 'neck9' for {type(model).__name__}; available: {', '.join(EXPECTED[name])}; "
        "or any submodule, module:PATH"
    )


@pytest.mark.parametrize("name", ["tiny-detr-resnet", "tiny-rtdetr-resnet", "tiny-deformable-detr"])
def test_logits_is_not_a_detector_point(name):
    model = _build(name)
    assert "logits" not in available_points(model)
    with pytest.raises(ValueError, match=r"Unknown distillation point 'logits' .*; available: neck1"):
        FeatureTaps(model, ["logits"])


@pytest.mark.parametrize("name", ["tiny-rtdetr-resnet", "tiny-deformable-detr"])
def test_remove_removes_every_hook(name):
    model = _build(name)
    before = sum(len(m._forward_hooks) for m in model.modules())
    taps = FeatureTaps(model, list(EXPECTED[name]))
    assert sum(len(m._forward_hooks) for m in model.modules()) > before
    taps.remove()
    assert sum(len(m._forward_hooks) for m in model.modules()) == before
    with torch.no_grad():
        model.eval()(pixel_values=_x())
    with pytest.raises(RuntimeError, match="was not recorded"):
        taps.collect()


def test_frozen_teacher_features_do_not_require_grad():
    teacher = freeze_teacher(_build("tiny-rtdetr-resnet").train())
    taps = FeatureTaps(teacher, ["neck1", "neck2", "neck3"])
    with torch.no_grad():
        features = taps.collect(teacher(pixel_values=_x(), pixel_mask=_pixel_mask()))
    assert not any(f.requires_grad for f in features.values())
    assert [tuple(f.shape) for f in features.values()] == [(2, 64, 16, 16), (2, 64, 8, 8), (2, 64, 4, 4)]


def test_timm_backbone_stage_names():
    # DETR with a timm ResNet (the facebook/detr-resnet-50 layout) unwraps the timm FeatureListNet: stage names come
    # from the timm feature indices (0 = stem, i = stage i), here with a negative index resolved.
    from transformers import DetrConfig, DetrForObjectDetection, TimmBackboneConfig

    config = DetrConfig(
        backbone_config=TimmBackboneConfig(backbone="resnet18", out_indices=[2, -1]),
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=5, id2label=ID2LABEL,
    )
    model = DetrForObjectDetection(config)
    assert available_points(model) == ["neck1", "stage2", "stage4"]
    assert probe_feature_shapes(model, ["neck1", "stage2", "stage4"], (64, 64)) == {
        "neck1": (32, 2, 2), "stage2": (128, 8, 8), "stage4": (512, 2, 2),
    }
