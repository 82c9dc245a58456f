"""Detection presets, loading, explicit backbone freezing, image processors and the object-detection pipeline."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForObjectDetection,
    DetrForObjectDetection,
    RTDetrForObjectDetection,
    pipeline,
)

from acamkd_hf.models import (
    DETECTION_PRESETS,
    default_detection_image_processor,
    detection_family,
    load_detection_model,
    set_backbone_frozen,
)

ID2LABEL = {0: "square", 1: "ellipse", 2: "triangle"}
TINY = [name for name in DETECTION_PRESETS if name.startswith("tiny-")]
PAPER = [name for name in DETECTION_PRESETS if not name.startswith("tiny-")]

# Published sizes (millions of parameters, COCO heads): DETR paper Table 1 (R50 41 M, R101 60 M), RT-DETR paper
# Table 2 (R18 20 M, R50 42 M, R101 76 M), Deformable DETR paper Table 1 (40 M). Our heads have 80 classes.
PUBLISHED_MPARAMS = {
    "detr-resnet50": 41.0,
    "detr-resnet101": 60.0,
    "rtdetr-resnet18": 20.0,
    "rtdetr-resnet50": 42.0,
    "rtdetr-resnet101": 76.0,
    "deformable-detr-resnet50": 40.0,
}
#: preset prefix -> (class name, backbone module path, (queries, classifier outputs) of the tiny presets for 3
#: classes). DETR has a "no object" logit (softmax); the others score classes with sigmoids (focal / varifocal / MAL
#: losses). The backbone is the module the family's checkpoints call it: the ViT alone for LW-DETR / RF-DETR (their
#: projector is the neck), DEIMv2's conv encoder (backbone + input projections).
KINDS = {
    "detr": ("DetrForObjectDetection", "model.backbone", (20, 4)),
    "conditional-detr": ("ConditionalDetrForObjectDetection", "model.backbone", (20, 3)),
    "dab-detr": ("DabDetrForObjectDetection", "model.backbone", (20, 3)),
    "deformable": ("DeformableDetrForObjectDetection", "model.backbone", (20, 3)),
    "rtdetr": ("RTDetrForObjectDetection", "model.backbone", (30, 3)),
    "rtdetrv2": ("RTDetrV2ForObjectDetection", "model.backbone", (30, 3)),
    "dfine": ("DFineForObjectDetection", "model.backbone", (30, 3)),
    "deimv2": ("Deimv2ForObjectDetection", "model.conv_encoder", (30, 3)),
    "lwdetr": ("LwDetrForObjectDetection", "model.backbone.backbone", (20, 3)),
    "rfdetr": ("RfDetrForObjectDetection", "model.backbone.backbone", (16, 3)),
}


def _kind(name):
    """The KINDS key of a preset name: "tiny-rtdetrv2-student" -> "rtdetrv2", "rtdetr-resnet50" -> "rtdetr"."""
    parts = name.removeprefix("tiny-").removesuffix("-student").split("-")
    for length in (2, 1):
        if "-".join(parts[:length]) in KINDS:
            return "-".join(parts[:length])
    raise KeyError(name)


def _build(name, **kwargs):
    torch.manual_seed(0)
    return DETECTION_PRESETS[name](ID2LABEL, **kwargs)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _backbone(model):
    """The model's backbone module, by its class (KINDS)."""
    return model.get_submodule(next(path for cls, path, _ in KINDS.values() if cls == type(model).__name__))


def _backbone_flags(model):
    return [p.requires_grad for p in _backbone(model).parameters()]


def _other_flags(model):
    backbone = {id(p) for p in _backbone(model).parameters()}
    return [p.requires_grad for p in model.parameters() if id(p) not in backbone]


@pytest.mark.parametrize("name", TINY)
def test_tiny_presets_train_and_predict(name):
    model = _build(name)
    assert type(model).__name__ == KINDS[_kind(name)][0]
    assert model.config.id2label == ID2LABEL
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.25], [0.7, 0.6, 0.3, 0.2]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    outputs = model.train()(pixel_values=x, pixel_mask=torch.ones(2, 128, 128, dtype=torch.long), labels=labels)
    assert outputs.loss.dim() == 0 and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert all(p.grad is not None for p in _backbone(model).parameters())  # the whole backbone trains
    with torch.no_grad():
        predictions = model.eval()(pixel_values=x)
    queries, scores = KINDS[_kind(name)][2]
    assert predictions.logits.shape == (2, queries, scores)
    assert predictions.pred_boxes.shape == (2, queries, 4)
    assert ((predictions.pred_boxes >= 0) & (predictions.pred_boxes <= 1)).all()


@pytest.mark.parametrize("kind", ["detr", "rtdetr", "deformable"])
def test_tiny_student_is_3_to_5x_smaller_and_shares_neck_and_head_widths(kind):
    teacher_name = {"detr": "tiny-detr-resnet", "rtdetr": "tiny-rtdetr-resnet", "deformable": "tiny-deformable-detr"}
    teacher = _build(teacher_name[kind])
    student = _build(teacher_name[kind] + "-student")
    assert 2.9 <= _count(teacher) / _count(student) <= 5.5
    assert _count(teacher) < 2_000_000
    t, s = teacher.config.to_dict(), student.config.to_dict()
    differing = {key for key in t if t[key] != s.get(key)}
    # only the backbone and what is read from its widths differ
    assert differing <= {"backbone_config", "encoder_in_channels"}, differing


@pytest.mark.parametrize("teacher_name", [name for name in TINY if name + "-student" in DETECTION_PRESETS])
def test_every_tiny_student_is_smaller_and_shares_neck_and_head_widths(teacher_name):
    # The HGNetV2s (D-FINE, DEIMv2) and the ViTs are light next to their necks: 1.4x to 2.2x there, 3x to 4x elsewhere.
    teacher, student = _build(teacher_name), _build(teacher_name + "-student")
    assert _count(teacher) / _count(student) >= 1.4 and _count(teacher) < 2_000_000
    t, s = teacher.config.to_dict(), student.config.to_dict()
    assert {key for key in t if t[key] != s.get(key)} <= {"backbone_config", "encoder_in_channels"}


@pytest.mark.parametrize("name", PAPER)
def test_paper_scale_presets_match_published_sizes(name):
    with torch.device("meta"):  # architecture only: no memory, no init
        model = DETECTION_PRESETS[name]({i: f"c{i}" for i in range(80)})
    assert type(model).__name__ == KINDS[_kind(name)][0]
    assert abs(_count(model) / 1e6 - PUBLISHED_MPARAMS[name]) / PUBLISHED_MPARAMS[name] < 0.03


@pytest.mark.parametrize("name", list(DETECTION_PRESETS))
@pytest.mark.parametrize("freeze", [False, True])
def test_backbone_freezing_is_explicit_for_every_preset(name, freeze):
    # transformers alone would freeze a transformers-ResNet DETR backbone entirely and a timm one not at all; the
    # builders decide explicitly, whatever the backbone.
    with torch.device("meta"):
        model = DETECTION_PRESETS[name](ID2LABEL, freeze_backbone=freeze)
    backbone = _backbone_flags(model)
    assert backbone and all(flag is (not freeze) for flag in backbone)
    backbone_ids = {id(p) for p in _backbone(model).parameters()}
    fixed = {name for name, p in model.named_parameters() if id(p) not in backbone_ids and not p.requires_grad}
    assert fixed <= {"model.decoder.reg_scale", "model.decoder.up"}  # D-FINE / DEIMv2 constants, never trained
    default = DETECTION_PRESETS[name].__kwdefaults__["freeze_backbone"]
    assert default is False


def test_set_backbone_frozen_toggles_both_ways():
    model = _build("tiny-detr-resnet")
    set_backbone_frozen(model, True)
    assert not any(_backbone_flags(model)) and all(_other_flags(model))
    set_backbone_frozen(model, False)
    assert all(_backbone_flags(model))


def test_load_preset_and_errors():
    model = load_detection_model("tiny-rtdetr-resnet", ID2LABEL)
    assert isinstance(model, RTDetrForObjectDetection) and all(_backbone_flags(model))
    frozen = load_detection_model("tiny-detr-resnet", ID2LABEL, freeze_backbone=True)
    assert not any(_backbone_flags(frozen))
    with pytest.raises(ValueError, match="needs id2label"):
        load_detection_model("tiny-detr-resnet")
    with pytest.raises(FileNotFoundError) as info:
        load_detection_model("tiny-rtdetr-resnt", ID2LABEL)
    message = str(info.value)
    assert "Did you mean 'tiny-rtdetr-resnet'?" in message
    assert all(name in message for name in DETECTION_PRESETS)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_detection_model("./no/such/folder")


@pytest.mark.parametrize("freeze_backbone", [None, True])
def test_saved_folder_round_trip(tmp_path, freeze_backbone):
    model = _build("tiny-detr-resnet").eval()
    model.save_pretrained(tmp_path)
    loaded = load_detection_model(str(tmp_path), freeze_backbone=freeze_backbone).eval()
    assert isinstance(loaded, DetrForObjectDetection)
    # transformers' own DETR-on-ResNet constructor freezes the whole backbone; None must mean trainable
    assert all(flag is (freeze_backbone is None) for flag in _backbone_flags(loaded))
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected, got = model(pixel_values=x), loaded(pixel_values=x)
    torch.testing.assert_close(got.logits, expected.logits)
    torch.testing.assert_close(got.pred_boxes, expected.pred_boxes)


def test_hub_ids_go_to_from_pretrained(monkeypatch):
    calls = []
    tiny = _build("tiny-detr-resnet")
    tiny.model.freeze_backbone()

    def fake_from_pretrained(name, **kwargs):
        calls.append((name, kwargs))
        return tiny, {}

    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda name, **kwargs: tiny.config)
    monkeypatch.setattr(AutoModelForObjectDetection, "from_pretrained", fake_from_pretrained)
    model = load_detection_model("facebook/detr-resnet-50", trust_remote_code=True, revision="abc")
    assert model is tiny
    assert calls == [("facebook/detr-resnet-50", {"trust_remote_code": True, "revision": "abc", "output_loading_info": True})]
    assert all(_backbone_flags(model))  # None -> trainable, not what the constructor left


def test_detection_family():
    assert detection_family("tiny-rtdetr-resnet") == "rt_detr"
    assert detection_family("detr-resnet50") == "detr"
    assert detection_family("tiny-deformable-detr-student") == "deformable_detr"
    assert detection_family("RT-DETR") == "rt_detr"
    assert detection_family(_build("tiny-deformable-detr")) == "deformable_detr"
    assert detection_family("tiny-dfine-student") == "d_fine" and detection_family("tiny-lwdetr") == "lw_detr"
    assert detection_family(_build("tiny-rfdetr")) == "rf_detr" and detection_family("RT-DETRv2") == "rt_detr_v2"
    with pytest.raises(ValueError, match="Unknown detection family"):
        detection_family("yolos")


#: family -> (processor class name, ImageNet-normalised, fixed square size): what each family's public checkpoints ship
PROCESSORS = {
    "detr": ("DetrImageProcessor", True, False),
    "conditional_detr": ("ConditionalDetrImageProcessor", True, False),
    "dab-detr": ("ConditionalDetrImageProcessor", True, False),
    "deformable_detr": ("DeformableDetrImageProcessor", True, False),
    "rt_detr": ("RTDetrImageProcessor", False, True),
    "rt_detr_v2": ("RTDetrImageProcessor", False, True),
    "d_fine": ("RTDetrImageProcessor", False, True),
    "deimv2": ("RTDetrImageProcessor", False, True),
    "lw_detr": ("DeformableDetrImageProcessor", True, True),
    "rf_detr": ("RfDetrImageProcessor", True, True),
}


@pytest.mark.parametrize("family", list(PROCESSORS))
def test_image_processor_resizes_and_converts_coco_annotations(family):
    name, normalize, square = PROCESSORS[family]
    processor = default_detection_image_processor(family, 96)
    assert type(processor).__name__ == name
    image = Image.fromarray(np.full((80, 160, 3), 255, dtype=np.uint8))
    box = {"bbox": [10, 20, 30, 40], "category_id": 2, "area": 1200, "iscrowd": 0}
    annotation = {"image_id": 7, "annotations": [box]}
    encoded = processor(images=[image], annotations=[annotation], return_tensors="pt")
    # square families: 96 x 96; the others: shortest edge 96 unless the longest passes 96 * 1333 / 800 = 160
    assert encoded["pixel_values"].shape == ((1, 3, 96, 96) if square else (1, 3, 80, 160))
    white = (1.0 - 0.485) / 0.229 if normalize else 1.0  # ImageNet mean/std, or only rescaled to [0, 1]
    assert encoded["pixel_values"][0, 0, 64, 48].item() == pytest.approx(white, abs=1e-3)
    label = encoded["labels"][0]
    assert label["class_labels"].tolist() == [2]
    # COCO (x, y, w, h) in pixels of the 160x80 original -> normalised (cx, cy, w, h)
    expected = [(10 + 15) / 160, (20 + 20) / 80, 30 / 160, 40 / 80]
    torch.testing.assert_close(label["boxes"][0], torch.tensor(expected), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", [name for name in TINY if not name.endswith("-student")])
def test_post_process_and_pipeline_offline(tmp_path, name):
    model = _build(name).eval()
    processor = default_detection_image_processor(name, 128)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8))
    with torch.no_grad():
        outputs = model(**processor(images=[image], return_tensors="pt"))
    results = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(96, 160)])
    boxes = results[0]["boxes"]
    assert len(boxes) > 0 and set(results[0]["labels"].tolist()) <= set(ID2LABEL)
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()  # xyxy in pixels
    assert boxes.max() <= 160 + 1e-3 and boxes.min() >= -1e-3

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    detector = pipeline("object-detection", model=str(tmp_path))  # offline: nothing but the folder
    assert type(detector.model) is type(model)
    found = detector(image, threshold=0.0)
    assert len(found) == len(boxes)
    assert {d["label"] for d in found} <= set(ID2LABEL.values())
    top = max(found, key=lambda d: d["score"])
    assert top["score"] == pytest.approx(results[0]["scores"].max().item(), abs=1e-5)
