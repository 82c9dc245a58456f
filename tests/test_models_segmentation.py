"""Segmentation models and presets: shapes, the loss against an independent cross-entropy, save/load through the
Auto classes, pipeline(), the trust_remote_code path without this package, and the preset / loading helpers.

Everything is built from configs with random weights; nothing reaches the Hub."""

import ast
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoConfig, AutoModelForSemanticSegmentation, SegformerConfig, pipeline

import acamkd_hf.models.deeplabv3 as deeplabv3_module
from acamkd_hf.models import (
    SEGMENTATION_PRESETS,
    DeepLabV3Config,
    DeepLabV3ForSemanticSegmentation,
    default_image_processor,
    describe_label_mismatch,
    load_segmentation_model,
)

ID2LABEL = {0: "road", 1: "car", 2: "sky", 3: "person", 4: "tree"}
# CPU-scale random-init presets: the tiny ones (tests) and the small teacher of the CPU default run.
TINY = [name for name in SEGMENTATION_PRESETS if name.startswith(("tiny-", "micro-", "small-"))]
# Output stride of the logits per tiny preset, from the architectures (DeepLabV3/MobileNetV2/MobileViT at OS 8,
# SegFormer's decoder and BEiT's UperNet head at 1/4, UperNet and DPT upsample to the input).
LOGIT_STRIDE = {
    "tiny-deeplabv3-resnet": 8,
    "tiny-deeplabv3-mobilenetv2-timm": 8,
    "tiny-segformer": 4,
    "micro-segformer": 4,
    "small-segformer": 4,
    "tiny-mobilenetv2-hf-deeplabv3": 8,
    "tiny-upernet": 1,
    "tiny-upernet-convnext": 1,
    "tiny-upernet-swin": 1,
    "tiny-upernet-dinov3": 1,
    "tiny-upernet-dinov3-convnext": 1,
    "tiny-dpt": 1,
    "tiny-dpt-hybrid": 1,
    "tiny-beit": 4,
    "tiny-mobilevit": 8,
    "tiny-mobilevitv2": 8,
}
# transformers' DPT takes square inputs only (the Hybrid exactly its config.image_size, 64 in the preset).
INPUT_SIZE = {"tiny-dpt": (64, 64), "tiny-dpt-hybrid": (64, 64)}




def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def _tiny_deeplab(**overrides):
    torch.manual_seed(0)
    return SEGMENTATION_PRESETS["tiny-deeplabv3-resnet"](ID2LABEL, **overrides)


def _labels(batch, height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(ID2LABEL), (batch, height, width), generator=g)
    labels[:, :5, :] = 255  # a band of void pixels
    labels[0, 10:20, 30:60] = 255
    return labels


def test_tiny_preset_list_is_complete():
    assert set(LOGIT_STRIDE) == set(TINY)
    full_size = {"deeplabv3-resnet101", "deeplabv3-resnet50", "deeplabv3-resnet18", "deeplabv3-mobilenetv2"}
    assert set(SEGMENTATION_PRESETS) == full_size | {"segformer-b0"} | set(TINY)


@pytest.mark.parametrize("name", TINY)
def test_tiny_preset_builds_with_labels_and_forward_shapes(name):
    model = SEGMENTATION_PRESETS[name]({str(k): v for k, v in ID2LABEL.items()})  # JSON-style str keys accepted
    assert model.config.id2label == ID2LABEL
    assert model.config.label2id == {v: k for k, v in ID2LABEL.items()}
    assert model.config.num_labels == 5
    stride, (height, width) = LOGIT_STRIDE[name], INPUT_SIZE.get(name, (64, 128))
    with torch.no_grad():
        logits = model.eval()(pixel_values=torch.randn(2, 3, height, width)).logits
    assert logits.shape == (2, 5, height // stride, width // stride)


def test_tiny_preset_overrides_reach_the_config():
    model = SEGMENTATION_PRESETS["tiny-deeplabv3-resnet"](ID2LABEL, use_auxiliary_head=False, aspp_channels=8)
    assert model.auxiliary_head is None and model.config.aspp_channels == 8
    assert model.decode_head.classifier.in_channels == 8


def test_teacher_preset_is_several_times_larger_than_student_preset():
    teacher = _n_params(SEGMENTATION_PRESETS["tiny-deeplabv3-resnet"](ID2LABEL))
    student = _n_params(SEGMENTATION_PRESETS["tiny-deeplabv3-mobilenetv2-timm"](ID2LABEL))
    assert 300_000 < teacher < 1_000_000
    assert teacher > 3 * student


def test_deeplabv3_logits_at_stride_8_and_hidden_states():
    model = _tiny_deeplab().eval()
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        reference = model.backbone(x)
    assert out.logits.shape == (2, 5, 12, 20)
    # OS 8: stage1 at 1/4, the dilated stages 2-4 all at 1/8; channels from the preset's backbone_kwargs.
    assert [tuple(h.shape) for h in out.hidden_states] == [
        (2, 16, 24, 40), (2, 32, 12, 20), (2, 64, 12, 20), (2, 128, 12, 20)
    ]
    for tapped, ref in zip(out.hidden_states, reference):
        assert torch.equal(tapped, ref)
    assert model(pixel_values=x, return_dict=False)[0].shape == (2, 5, 12, 20)


def test_loss_equals_independent_cross_entropy_without_aux():
    model = _tiny_deeplab(use_auxiliary_head=False).eval()
    x, labels = torch.randn(2, 3, 64, 128), _labels(2, 64, 128)
    out = model(pixel_values=x, labels=labels)
    upsampled = F.interpolate(out.logits.detach(), size=(64, 128), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(upsampled, labels, ignore_index=255)
    torch.testing.assert_close(out.loss.detach(), expected)
    # Labels at another size than the input: the logits are upsampled to the labels.
    small = _labels(2, 32, 48, seed=1)
    out_small = model(pixel_values=x, labels=small)
    up_small = F.interpolate(out_small.logits.detach(), size=(32, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out_small.loss.detach(), F.cross_entropy(up_small, small, ignore_index=255))


def test_aux_head_adds_weighted_aux_cross_entropy():
    model = _tiny_deeplab(auxiliary_loss_weight=0.4).eval()  # eval: dropout off, so heads are deterministic
    x, labels = torch.randn(2, 3, 64, 128), _labels(2, 64, 128)
    with torch.no_grad():
        out = model(pixel_values=x, labels=labels)
        aux_logits = model.auxiliary_head(model.backbone(x)[-2])  # the stage-3 map
    main = F.cross_entropy(
        F.interpolate(out.logits, size=(64, 128), mode="bilinear", align_corners=False), labels, ignore_index=255
    )
    aux = F.cross_entropy(
        F.interpolate(aux_logits, size=(64, 128), mode="bilinear", align_corners=False), labels, ignore_index=255
    )
    assert aux > 0
    torch.testing.assert_close(out.loss, main + 0.4 * aux)


def test_all_void_batch_gives_zero_loss_not_nan():
    model = _tiny_deeplab().train()
    labels = torch.full((2, 64, 128), 255)
    out = model(pixel_values=torch.randn(2, 3, 64, 128), labels=labels)
    assert out.loss.item() == 0.0
    out.loss.backward()  # still a graph


def test_training_step_reaches_backbone_and_head():
    model = _tiny_deeplab().train()
    out = model(pixel_values=torch.randn(2, 3, 64, 128), labels=_labels(2, 64, 128))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_backbone_keeps_timm_initialisation():
    # transformers' generic _init_weights would draw every conv from normal(0, 0.02) and set every BN weight to 1.
    # The backbone must equal a timm model created alone with the same seed.
    import timm

    torch.manual_seed(123)
    model = SEGMENTATION_PRESETS["tiny-deeplabv3-resnet"](ID2LABEL)
    torch.manual_seed(123)
    reference = timm.create_model(
        "resnet18", features_only=True, output_stride=8, out_indices=(1, 2, 3, 4),
        channels=(16, 32, 64, 128), stem_type="deep", stem_width=8,
    )
    ours = model.backbone.state_dict()
    assert ours.keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(ours[key], value), key
    # timm zero-initialises the last BN of each residual block.
    assert torch.count_nonzero(model.backbone.layer1[0].bn2.weight) == 0


def test_save_pretrained_roundtrip_through_auto_classes(tmp_path):
    model = _tiny_deeplab().eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "timm_deeplabv3"
    assert saved["auto_map"]["AutoModelForSemanticSegmentation"] == "deeplabv3.DeepLabV3ForSemanticSegmentation"
    assert (tmp_path / "deeplabv3.py").exists()
    # The copied modeling file must be self-contained: only stdlib, torch, timm and transformers imports.
    nodes = list(ast.walk(ast.parse((tmp_path / "deeplabv3.py").read_text())))
    imported = {alias.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert not any(isinstance(node, ast.ImportFrom) and node.level > 0 for node in nodes)  # no relative imports
    assert imported <= {"__future__", "contextlib", "contextvars", "timm", "torch", "transformers"}, imported

    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, DeepLabV3Config) and config.backbone_kwargs["channels"] == [16, 32, 64, 128]
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert type(loaded) is DeepLabV3ForSemanticSegmentation  # the package's class, not remote code
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        # Identical weights, but loaded tensors are not 64-byte aligned, so oneDNN may pick another kernel for the
        # same conv: equal up to float rounding, not bit for bit.
        torch.testing.assert_close(model(pixel_values=x).logits, loaded(pixel_values=x).logits, rtol=1e-5, atol=1e-6)


def test_from_pretrained_never_fetches_backbone_weights(tmp_path, monkeypatch):
    calls = []
    real_create = deeplabv3_module.timm.create_model

    def recording_create(name, pretrained=False, **kwargs):
        calls.append(pretrained)
        return real_create(name, pretrained=False, **kwargs)  # never download in the test

    monkeypatch.setattr(deeplabv3_module.timm, "create_model", recording_create)
    model = _tiny_deeplab(use_pretrained_backbone=True)
    assert calls == [True]  # first creation asks timm for ImageNet weights
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["use_pretrained_backbone"] is True
    AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    DeepLabV3ForSemanticSegmentation.from_pretrained(tmp_path)
    assert calls == [True, False, False]


def _image(height=50, width=70, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_pipeline_image_segmentation_offline(tmp_path):
    model = _tiny_deeplab().eval()
    model.save_pretrained(tmp_path)
    processor = default_image_processor((64, 128))
    processor.save_pretrained(tmp_path)
    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    image = _image()
    results = segmenter(image)
    assert results and {r["label"] for r in results} <= set(ID2LABEL.values())
    # Independent reference: preprocess, forward, bilinear upsample to the image size, argmax.
    with torch.no_grad():
        pixel_values = processor(image, return_tensors="pt")["pixel_values"]
        logits = model(pixel_values=pixel_values).logits
    prediction = F.interpolate(logits, size=(50, 70), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    label2id = model.config.label2id
    assert {r["label"] for r in results} == {ID2LABEL[i] for i in np.unique(prediction)}
    for r in results:
        mask = np.array(r["mask"]) > 0
        assert mask.shape == (50, 70)
        np.testing.assert_array_equal(mask, prediction == label2id[r["label"]])


def test_trust_remote_code_loads_without_the_package(tmp_path):
    model = _tiny_deeplab().eval()
    model.save_pretrained(tmp_path / "ckpt")
    default_image_processor((64, 128)).save_pretrained(tmp_path / "ckpt")
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        torch.save({"x": x, "logits": model(pixel_values=x).logits, "state": model.state_dict()}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["acamkd_hf"] = None  # `import acamkd_hf` now raises ImportError
        import torch
        from transformers import AutoModelForSemanticSegmentation, pipeline
        model = AutoModelForSemanticSegmentation.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        io = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        state = model.state_dict()
        assert state.keys() == io["state"].keys()
        assert all(torch.equal(state[k], io["state"][k]) for k in state)
        # logits: equal up to float noise (another process may pick other CPU kernels / thread counts)
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(pixel_values=io["x"]).logits, io["logits"], rtol=1e-5, atol=1e-6)
        from PIL import Image
        seg = pipeline("image-segmentation", model={str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        assert len(seg(Image.new("RGB", (40, 30)))) >= 1
        assert sys.modules["acamkd_hf"] is None
        print("REMOTE-CODE-OK")
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-CODE-OK" in result.stdout


def test_load_segmentation_model_builds_presets_and_loads_folders(tmp_path):
    model = load_segmentation_model("tiny-segformer", ID2LABEL)
    assert type(model).__name__ == "SegformerForSemanticSegmentation" and model.config.id2label == ID2LABEL
    with pytest.raises(ValueError, match="needs id2label"):
        load_segmentation_model("tiny-segformer")
    _tiny_deeplab().save_pretrained(tmp_path / "ckpt")
    loaded = load_segmentation_model(str(tmp_path / "ckpt"))
    assert isinstance(loaded, DeepLabV3ForSemanticSegmentation)
    assert loaded.config.id2label == ID2LABEL  # without the dataset's labels: its own
    # With another label set: loaded for it, the classifiers re-initialised (tests/test_pretrained_students.py).
    relabelled = load_segmentation_model(str(tmp_path / "ckpt"), {0: "other"})
    assert relabelled.config.id2label == {0: "other"} and relabelled.decode_head.classifier.out_channels == 1


def test_load_segmentation_model_passes_hub_ids_through(monkeypatch):
    seen = {}

    config = SegformerConfig(id2label=ID2LABEL)

    def fake_config(name, **kwargs):
        seen.update(config=(name, kwargs))
        return config

    def fake_from_pretrained(name, **kwargs):
        seen.update(name=name, **kwargs)
        return "model", {}

    monkeypatch.setattr(AutoConfig, "from_pretrained", fake_config)
    monkeypatch.setattr(AutoModelForSemanticSegmentation, "from_pretrained", fake_from_pretrained)
    result = load_segmentation_model("nvidia/segformer-b0-finetuned-ade-512-512", trust_remote_code=True, revision="v1")
    assert result == "model"
    assert seen == {"config": ("nvidia/segformer-b0-finetuned-ade-512-512", {"trust_remote_code": True, "revision": "v1"}),
                    "name": "nvidia/segformer-b0-finetuned-ade-512-512", "trust_remote_code": True, "revision": "v1",
                    "output_loading_info": True}


@pytest.mark.parametrize(
    "missing", ["./no/such/folder", "/definitely/not/here", "runs/student/checkpoint-5", "tiny-segformr"]
)
def test_load_segmentation_model_missing_path_message(missing):
    with pytest.raises(FileNotFoundError) as info:
        load_segmentation_model(missing, ID2LABEL)
    message = str(info.value)
    assert repr(missing) in message and "no such folder" in message
    for name in SEGMENTATION_PRESETS:
        assert name in message
    if missing == "tiny-segformr":
        assert "Did you mean 'tiny-segformer'?" in message


def test_describe_label_mismatch():
    a = {0: "road", 1: "car", 2: "sky"}
    assert describe_label_mismatch(a, {"0": "road", "1": "car", "2": "sky"}) is None
    message = describe_label_mismatch(a, {0: "road", 1: "car", 2: "bus", 3: "train"})
    assert "Only in A: 'sky'." in message and "Only in B: 'bus', 'train'." in message
    assert "(A: 3 classes, B: 4 classes)" in message
    reordered = describe_label_mismatch(a, {0: "car", 1: "road", 2: "sky"}, name_a="teacher", name_b="student")
    assert "Only in" not in reordered
    assert "'road' (teacher id 0, student id 1)" in reordered and "'car' (teacher id 1, student id 0)" in reordered
    assert "'sky'" not in reordered


def test_default_image_processor_values():
    processor = default_image_processor((32, 48))
    assert processor.size == {"height": 32, "width": 48} and processor.do_reduce_labels is False
    value = 200
    pixel_values = processor(Image.new("RGB", (100, 60), (value, value, value)), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 48)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics
    for c in range(3):
        torch.testing.assert_close(pixel_values[0, c], torch.full((32, 48), (value / 255 - mean[c]) / std[c]))


@pytest.mark.parametrize(
    "name, timm_name, last_channels",
    [
        ("deeplabv3-resnet101", "resnet101", 2048),
        ("deeplabv3-resnet50", "resnet50", 2048),
        ("deeplabv3-resnet18", "resnet18", 512),
        ("deeplabv3-mobilenetv2", "mobilenetv2_100", 320),
    ],
)
def test_full_size_deeplabv3_presets(name, timm_name, last_channels, monkeypatch):
    # Built on the meta device (no memory, no init) with timm's download intercepted: checks the paper settings.
    calls = []
    real_create = deeplabv3_module.timm.create_model

    def recording_create(model_name, pretrained=False, **kwargs):
        calls.append((model_name, pretrained, kwargs["output_stride"]))
        return real_create(model_name, pretrained=False, **kwargs)

    monkeypatch.setattr(deeplabv3_module.timm, "create_model", recording_create)
    with torch.device("meta"):
        model = SEGMENTATION_PRESETS[name](ID2LABEL)
    assert calls == [(timm_name, True, 8)]  # ImageNet backbone, output stride 8
    config = model.config
    assert (config.output_stride, tuple(config.atrous_rates), config.aspp_channels) == (8, (12, 24, 36), 256)
    assert config.use_auxiliary_head and config.auxiliary_loss_weight == 0.4
    assert model.decode_head.aspp.branches[0][0].in_channels == last_channels


def test_segformer_b0_preset_uses_transformers_defaults():
    with torch.device("meta"):
        model = SEGMENTATION_PRESETS["segformer-b0"](ID2LABEL)
    defaults = SegformerConfig()
    assert list(model.config.hidden_sizes) == list(defaults.hidden_sizes) == [32, 64, 160, 256]
    assert list(model.config.depths) == list(defaults.depths) == [2, 2, 2, 2]
    assert model.config.decoder_hidden_size == 256
