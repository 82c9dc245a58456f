"""The segmentation families of issue 23: DPT (ViT and Hybrid), BEiT, MobileViT, MobileViTV2, UperNet on ConvNeXt /
Swin / DINOv3; the generic ``logits`` point of a segmenter without a family entry; ``module:`` points through the
command line; DPT's input-size rule; MobileViT's processor; mask classification refused.

Every model is a tiny random-init preset (or built here from a config); nothing reaches the Hub."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForSemanticSegmentation,
    Data2VecVisionConfig,
    Data2VecVisionForSemanticSegmentation,
    EomtConfig,
    EomtForUniversalSegmentation,
    Mask2FormerConfig,
    MobileViTImageProcessor,
    ResNetConfig,
    pipeline,
)

from acamkd_hf import cli
from acamkd_hf.config import DistillationArguments
from acamkd_hf.data.transforms import SegmentationTransforms
from acamkd_hf.families import FAMILIES
from acamkd_hf.families.segmentation import input_size_problem
from acamkd_hf.inheritance import find_backbone_prefix, inherit_from_teacher
from acamkd_hf.models import SEGMENTATION_PRESETS, default_image_processor, load_segmentation_model
from acamkd_hf.placement import find_unused_parameters_if_needed, parameters_without_gradient
from acamkd_hf.taps import FeatureTaps, available_points, probe_feature_shapes
from acamkd_hf.trainer import DistillationTrainer

ID2LABEL = {i: f"class{i}" for i in range(5)}
SIDE = 64
STAGES = ["stage1", "stage2", "stage3", "stage4"]
ALL = ["logits", *STAGES]

# (C, H, W) of logits, stage1..4 for a 64x64 input, worked out from each preset's config: DPT's neck_hidden_sizes
# 8/16/32/64 at strides 4..32 (the Hybrid's first two are BiT's 16/32-channel stage1/2), logits upsampled to the
# input; BEiT's FPN, 32 channels at strides 4..32, logits at stride 4; MobileViT (neck_hidden_sizes[2:6] 16/16/24/32)
# and MobileViTV2 x0.25 (32/64/96/128) at output stride 8 (stages 3 and 4 dilated), logits at 8; UperNet's logits at
# the input, ConvNeXt / DINOv3-ConvNeXt 8..32 and Swin 8..64 channels at 4..32, the DINOv3 ViT's four layers at its
# patch size 16, 32 channels.
EXPECTED_SHAPES = {
    "tiny-dpt": [(5, 64, 64), (8, 16, 16), (16, 8, 8), (32, 4, 4), (64, 2, 2)],
    "tiny-dpt-hybrid": [(5, 64, 64), (16, 16, 16), (32, 8, 8), (32, 4, 4), (64, 2, 2)],
    "tiny-beit": [(5, 16, 16), (32, 16, 16), (32, 8, 8), (32, 4, 4), (32, 2, 2)],
    "tiny-mobilevit": [(5, 8, 8), (16, 16, 16), (16, 8, 8), (24, 8, 8), (32, 8, 8)],
    "tiny-mobilevitv2": [(5, 8, 8), (32, 16, 16), (64, 8, 8), (96, 8, 8), (128, 8, 8)],
    "tiny-upernet-convnext": [(5, 64, 64), (8, 16, 16), (16, 8, 8), (24, 4, 4), (32, 2, 2)],
    "tiny-upernet-swin": [(5, 64, 64), (8, 16, 16), (16, 8, 8), (32, 4, 4), (64, 2, 2)],
    "tiny-upernet-dinov3": [(5, 64, 64), (32, 4, 4), (32, 4, 4), (32, 4, 4), (32, 4, 4)],
    "tiny-upernet-dinov3-convnext": [(5, 64, 64), (8, 16, 16), (16, 8, 8), (24, 4, 4), (32, 2, 2)],
}
PRESETS = list(EXPECTED_SHAPES)
CLASSES = {
    "tiny-dpt": "DPTForSemanticSegmentation",
    "tiny-dpt-hybrid": "DPTForSemanticSegmentation",
    "tiny-beit": "BeitForSemanticSegmentation",
    "tiny-mobilevit": "MobileViTForSemanticSegmentation",
    "tiny-mobilevitv2": "MobileViTV2ForSemanticSegmentation",
}


def _build(name, seed=0):
    torch.manual_seed(seed)
    return SEGMENTATION_PRESETS[name](ID2LABEL)


def _x(batch=2, seed=0):
    return torch.randn(batch, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def _reassembled_by_hand(stage, tokens, i, grid):
    """DPT's reassembly of one layer's tokens (B, 1 + h*w, C), written out: the patch tokens on the (h, w) grid, the
    CLS token concatenated to each and projected (readout "project"), then the layer's 1x1 conv and resize."""
    cls, patches = tokens[:, 0], tokens[:, 1:]
    projected = stage.readout_projects[i](torch.cat([patches, cls[:, None].expand_as(patches)], dim=-1))
    return stage.layers[i](projected.transpose(1, 2).reshape(tokens.shape[0], -1, *grid))


def _reference_stages(name, model, x):
    """Stage maps recomputed without the hooks, from the model's hidden states or by running the backbone prefix."""
    if name.startswith("tiny-upernet"):
        return list(model.backbone(x).feature_maps)
    if name.startswith("tiny-mobilevit"):
        base = model.base_model
        maps, h = [], base.conv_stem(x)
        for layer in base.encoder.layer:
            h = layer(h)
            maps.append(h)
        return maps[1:]
    outputs = model(pixel_values=x, output_hidden_states=True)
    grid = (SIDE // 16, SIDE // 16)
    if name == "tiny-beit":
        maps = [outputs.hidden_states[i - 1][:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)
                for i in model.config.out_indices]
        return [model.fpn.fpn1(maps[0]), model.fpn.fpn2(maps[1]), maps[2], model.fpn.fpn4(maps[3])]
    layers = [outputs.hidden_states[1:][i] for i in model.config.backbone_out_indices]
    stage = model.neck.reassemble_stage
    if name == "tiny-dpt":
        return [_reassembled_by_hand(stage, tokens, i, grid) for i, tokens in enumerate(layers)]
    bit_maps = list(model.dpt.embeddings.backbone(x).feature_maps[:2])  # DPT-Hybrid: BiT's stage1 and stage2 as they are
    return bit_maps + [_reassembled_by_hand(stage, layers[i], i, grid) for i in (2, 3)]


def _head(model):
    for name in ("decode_head", "segmentation_head", "head"):
        if hasattr(model, name):
            return getattr(model, name)
    raise AssertionError(type(model).__name__)


def test_the_new_families_have_table_entries_and_presets():
    assert set(CLASSES.values()) <= set(FAMILIES)
    for name, class_name in CLASSES.items():
        assert type(_build(name)).__name__ == class_name


@pytest.mark.parametrize("name", PRESETS)
def test_points_probe_and_collect_the_expected_maps(name):
    model = _build(name).eval()
    assert available_points(model) == ALL
    probed = probe_feature_shapes(model, ALL, (SIDE, SIDE))
    assert list(probed.values()) == EXPECTED_SHAPES[name]
    taps = FeatureTaps(model, ALL)
    with torch.no_grad():
        outputs = model(pixel_values=_x())
    collected = taps.collect(outputs)
    assert {point: tuple(f.shape[1:]) for point, f in collected.items()} == probed
    assert collected["logits"] is outputs.logits


@pytest.mark.parametrize("name", PRESETS)
def test_stage_maps_equal_independent_references(name):
    model = _build(name).eval()
    x = _x()
    taps = FeatureTaps(model, STAGES)
    with torch.no_grad():
        tapped = taps.collect(model(pixel_values=x))
        reference = _reference_stages(name, model, x)
    assert len(reference) == 4
    for stage, ref in zip(STAGES, reference):
        torch.testing.assert_close(tapped[stage], ref, rtol=1e-5, atol=1e-6, msg=stage)


@pytest.mark.parametrize("name", ["tiny-dpt", "tiny-dpt-hybrid"])
def test_dpt_stages_are_what_its_neck_convs_read(name):
    model = _build(name).eval()
    read = {}
    for i, conv in enumerate(model.neck.convs):
        conv.register_forward_pre_hook(lambda module, args, i=i: read.__setitem__(i, args[0]))
    taps = FeatureTaps(model, STAGES)
    with torch.no_grad():
        tapped = taps.collect(model(pixel_values=_x()))
    assert all(tapped[f"stage{i + 1}"] is read[i] for i in range(4))


@pytest.mark.parametrize("name", PRESETS)
def test_training_backward_through_every_point_and_a_stage_loss_stays_in_the_backbone(name):
    # Train mode, task loss + a loss on every tapped map: an in-place op on a tapped tensor would fail the backward
    # (or the version check in collect).
    model = _build(name).train()
    taps = FeatureTaps(model, ALL)
    outputs = model(pixel_values=_x(), labels=torch.randint(0, 5, (2, SIDE, SIDE)))
    features = taps.collect(outputs)
    (outputs.loss + sum(f.pow(2).mean() for f in features.values())).backward()
    assert all(f.requires_grad for f in features.values())
    taps.remove()
    model.zero_grad(set_to_none=True)
    taps = FeatureTaps(model, ["stage1"])  # the finest stage alone: upstream of the head
    model(pixel_values=_x())
    taps.collect()["stage1"].pow(2).mean().backward()
    backbone = find_backbone_prefix(model)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith(backbone))
    assert all(p.grad is None for p in _head(model).parameters())


@pytest.mark.parametrize(("name", "backbone"), [("tiny-dpt", "dpt"), ("tiny-beit", "beit"),
                                                 ("tiny-mobilevitv2", "mobilevitv2")])
def test_inheritance_leaves_the_backbone_and_copies_neck_and_heads(name, backbone):
    student, teacher = _build(name, seed=0), _build(name, seed=1)
    before = {key: value.clone() for key, value in student.state_dict().items()}
    report = inherit_from_teacher(student, teacher)
    assert report.backbone_prefix == backbone and report.skipped_backbone > 0 and not report.shape_mismatch
    after, teachers = student.state_dict(), teacher.state_dict()
    for key in after:
        expected = before[key] if key.startswith(backbone + ".") else teachers[key]
        assert torch.equal(after[key], expected), key


def test_dpt_takes_square_inputs_only_and_the_hybrid_its_configured_size():
    dpt, hybrid = _build("tiny-dpt").eval(), _build("tiny-dpt-hybrid").eval()
    with torch.no_grad():  # why the rule: 32x128 is 2x8 = 16 tokens, read as a 4x4 grid, with no error
        assert dpt(pixel_values=torch.randn(1, 3, 32, 128)).logits.shape[-2:] == (64, 64)
    assert input_size_problem(dpt, (96, 96)) is None and input_size_problem(hybrid, (64, 64)) is None
    assert "must be square" in input_size_problem(dpt, (32, 128))
    assert input_size_problem(hybrid, (96, 96)) == "DPT-Hybrid takes 64x64 inputs only (its config.image_size)"
    assert input_size_problem(_build("tiny-beit"), (32, 128)) is None


def test_mobilevit_processor_conventions_reach_the_training_inputs():
    """A MobileViT checkpoint's own processor (no normalisation, BGR): the training transform feeds what the
    processor itself would; the default processor (the presets') stays RGB, ImageNet-normalised."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8))
    label = Image.fromarray(np.zeros((16, 24), dtype=np.uint8))
    processor = MobileViTImageProcessor(do_resize=False, do_center_crop=False)
    ours = SegmentationTransforms(processor, train=False)({"image": [image], "label": [label]})["pixel_values"][0]
    torch.testing.assert_close(ours, processor(image, return_tensors="pt").pixel_values[0])
    rgb = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(ours, rgb.flip(0))
    default = SegmentationTransforms(default_image_processor((16, 24)), train=False)({"image": [image], "label": [label]})
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(default["pixel_values"][0], (rgb - mean) / std)


def test_beit_student_with_the_default_processor_runs_in_the_pipeline(tmp_path):
    model = _build("tiny-beit").eval()
    model.save_pretrained(tmp_path)
    default_image_processor((SIDE, SIDE)).save_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    results = pipeline("image-segmentation", model=str(tmp_path))(image)
    assert results and {r["label"] for r in results} <= set(ID2LABEL.values())
    assert all(r["mask"].size == (80, 48) for r in results)  # masks at the image's own size


@dataclass
class _LaunchArgs:
    """The fields of the training arguments that decide DDP's unused-parameter search."""

    world_size: int = 2
    fsdp: object = None
    deepspeed: object = None
    ddp_find_unused_parameters: bool = False
    should_log: bool = True


def test_parameters_the_loss_does_not_reach_are_found_and_ddp_told():
    beit = _build("tiny-beit")  # out_indices [1, 2, 3, 4] read the embeddings and layers 0..2: layer 3 is never read
    batch = {"pixel_values": _x(), "labels": torch.randint(0, 5, (2, SIDE, SIDE))}
    unused = parameters_without_gradient(beit.eval(), batch)
    assert unused == [name for name, _ in beit.named_parameters() if name.startswith("beit.layers.3.")]
    assert not beit.training and all(p.grad is None for p in beit.parameters())
    # A model with dropout and BatchNorm: the dry step (in training mode) leaves the RNG and the statistics as they were.
    mobilevit = _build("tiny-mobilevit").eval()
    buffers = {name: b.clone() for name, b in mobilevit.named_buffers()}
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    assert parameters_without_gradient(mobilevit, batch) == []
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(b, buffers[name]) for name, b in mobilevit.named_buffers())
    told = find_unused_parameters_if_needed(beit, _LaunchArgs(), lambda: batch)
    assert told.ddp_find_unused_parameters
    alone = _LaunchArgs(world_size=1)
    assert find_unused_parameters_if_needed(beit, alone, lambda: pytest.fail("no dry run in one process")) is alone
    fsdp = _LaunchArgs(fsdp="full_shard")
    assert find_unused_parameters_if_needed(beit, fsdp, lambda: pytest.fail("no dry run under FSDP")) is fsdp


def _data2vec(id2label=ID2LABEL):
    """A segmenter with no family entry (Data2VecVision: BEiT's layout in its own classes)."""
    config = Data2VecVisionConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                                  image_size=SIDE, patch_size=16, out_indices=[1, 2, 3, 4], use_auxiliary_head=False,
                                  id2label=id2label, label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    return Data2VecVisionForSemanticSegmentation(config)


def test_a_segmenter_without_a_family_entry_has_its_logits():
    model = _data2vec().eval()
    assert not any(cls.__name__ in FAMILIES for cls in type(model).__mro__)
    assert available_points(model) == ["logits"]
    taps = FeatureTaps(model, ["logits", "module:fpn2"])
    with torch.no_grad():
        outputs = model(pixel_values=_x())
    features = taps.collect(outputs)
    assert features["logits"] is outputs.logits and features["module:fpn2"].shape == (2, 32, 8, 8)


def test_mask_classification_is_refused_naming_the_reason(tmp_path):
    model = EomtForUniversalSegmentation(EomtConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=SIDE,
        patch_size=16, num_queries=5, num_blocks=1, num_labels=3))
    reason = "EomtForUniversalSegmentation is a mask-classification model"
    with pytest.raises(ValueError, match=f"available: none .*{reason}"):
        FeatureTaps(model, ["logits"])
    with pytest.raises(TypeError, match=f"the student: {reason}"):
        DistillationTrainer(model=model, args=DistillationArguments(output_dir=str(tmp_path / "out"), method="none"))
    Mask2FormerConfig(backbone_config=ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"]),
                      num_labels=3).save_pretrained(tmp_path / "m2f")
    with pytest.raises(ValueError, match=r"mask2former checkpoint.*mask classification \(Mask2Former.*\) is not supported"):
        load_segmentation_model(str(tmp_path / "m2f"), ID2LABEL, role="student")


# ----------------------------------------------------------------------------------------------- command line
def _flags(tmp_path, out, *extra):
    return ["--output_dir", str(tmp_path / out), "--synthetic_dir", str(tmp_path / "data"), "--synthetic_image_size",
            str(SIDE), str(SIDE), "--synthetic_num_train", "8", "--synthetic_num_val", "4", "--num_train_epochs", "1",
            "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--compare_student_alone", "false", *extra]


def _segments(folder, data_folder):
    image = Image.open(next(data_folder.glob("leftImg8bit/val/*/*.png"))).convert("RGB")
    return pipeline("image-segmentation", model=str(folder))(image)


@pytest.mark.parametrize(("teacher", "student"), [("tiny-dpt", "tiny-mobilevit"), ("tiny-mobilevit", "tiny-dpt")])
def test_the_command_distils_dpt_and_mobilevit_and_saves_a_pipeline_ready_student(tmp_path, teacher, student):
    results = cli.run(_flags(tmp_path, "student", "--teacher_architecture", teacher, "--student", student))
    for row in ("teacher", "student"):
        assert 0 <= results[row]["eval_mean_iou"] <= 1 and results[row]["global_step"] == 2
    assert results["student"]["method"] == "acamkd" and not math.isnan(results["student"]["eval_loss"])
    model = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "student")
    assert type(model).__name__ == CLASSES[student]
    segments = _segments(tmp_path / "student", tmp_path / "data")
    assert segments and {s["label"] for s in segments} <= set(model.config.id2label.values())


def test_the_command_distils_a_family_without_an_entry_at_logits_and_any_model_at_a_module_point(tmp_path):
    d2v = tmp_path / "d2v"
    _data2vec({0: "a", 1: "b", 2: "c"}).save_pretrained(d2v)  # loaded with the dataset's labels (a new head)
    fallback = cli.run(_flags(tmp_path, "d2v_student", "--teacher_architecture", "tiny-segformer", "--student", str(d2v)))
    assert fallback["student"]["global_step"] == 2 and 0 <= fallback["student"]["eval_mean_iou"] <= 1
    assert type(AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "d2v_student")).__name__ == \
        "Data2VecVisionForSemanticSegmentation"
    # A module point, with the teacher trained above (the dataset's classes); every point's terms are logged by name.
    point = "module:segformer.stages.1"
    teacher = str(tmp_path / "d2v_student_teacher")
    cli.run(_flags(tmp_path, "module_student", "--teacher", teacher, "--student", "tiny-segformer",
                   "--distillation_points", "logits", point, "--logging_steps", "1", "--mask_visualization_steps", "2"))
    state = (tmp_path / "module_student" / "trainer_state.json").read_text()
    assert f'"distill/{point}/loss"' in state and f'"distill/{point}/spatial_mask_dice"' in state
    assert (tmp_path / "module_student" / "mask_visualizations" / "step-2" / "module_segformer.stages.1.png").is_file()
    assert _segments(tmp_path / "module_student", tmp_path / "data")


@pytest.mark.parametrize(("points", "message"), [
    (["module:segformer.stage.1"], r"no submodule 'segformer\.stage\.1'; closest: segformer\.stages\.1"),
    (["module:segformer.stages.1[0]"], r"the student 'tiny-segformer': .*returns a tensor of shape \(1, 32, 8, 8\)"),
    (["module:segformer.stages.1.blocks.0"], r"the student 'tiny-segformer': .*has shape \(1, 64, 32\); expected"),
])
def test_a_module_point_that_is_not_a_map_fails_before_anything_trains(tmp_path, points, message):
    with pytest.raises(ValueError, match=message):
        cli.run(_flags(tmp_path, "student", "--teacher_architecture", "tiny-segformer", "--student", "tiny-segformer",
                       "--distillation_points", *points))
    assert not (tmp_path / "student_teacher").exists()  # the teacher was not trained


def test_a_dpt_student_on_non_square_images_is_refused_before_anything_trains(tmp_path):
    flags = _flags(tmp_path, "student", "--teacher_architecture", "tiny-segformer", "--student", "tiny-dpt")
    flags[flags.index("--synthetic_image_size") + 2] = str(2 * SIDE)
    with pytest.raises(ValueError, match=r"the student 'tiny-dpt' cannot take the training inputs \(64x128\): "
                                         r"transformers' DPT reads its patch tokens as a square grid"):
        cli.run(flags)
    assert not (tmp_path / "student_teacher").exists()

