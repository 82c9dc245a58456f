"""MaskVisualizationCallback and scripts/plot_mask_evolution.py on tiny SegFormers and a tiny synthetic
Cityscapes-layout set: the files it writes, the masks it saves (against masks computed here by running the loss
modules directly), the numbers it logs, that training is bit-identical with and without it, TensorBoard, and the
refusal for methods without masks."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch
from PIL import Image
from transformers import TrainerCallback

from acamkd_hf import DistillationArguments, DistillationTrainer
from acamkd_hf.data import (
    SegmentationTransforms,
    collate_segmentation,
    load_cityscapes,
    make_synthetic_cityscapes,
)
from acamkd_hf.mask_rendering import (
    DEFAULT_IMAGE_MEAN,
    DEFAULT_IMAGE_STD,
    HEADER_HEIGHT,
    channel_bar_image,
    render_point_masks,
)
from acamkd_hf.models import SEGMENTATION_PRESETS, default_image_processor
from acamkd_hf.visualization import MaskVisualizationCallback

IMAGE_SIZE = (32, 64)
NUM_CLASSES = 4  # = M, the number of masks (the paper's default for segmentation)
REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet: what default_image_processor normalises with


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_synthetic_cityscapes(
        tmp_path_factory.mktemp("synthetic"), num_train=16, num_val=4, image_size=IMAGE_SIZE,
        num_classes=NUM_CLASSES, seed=0,
    )
    return load_cityscapes(root)


def _make(data, output_dir, *, evaluation="plain", **overrides):
    """``evaluation``: "plain" (the validation split, deterministic transform), "augmented" (the validation split
    through the random training augmentations, which draw from torch's global RNG when read) or None."""
    processor = default_image_processor(IMAGE_SIZE)
    augment = SegmentationTransforms(
        processor, train=True, crop_size=IMAGE_SIZE, scale_range=(0.75, 1.5), hflip=True, label_lookup=data.label_lookup)
    train = data.dataset["train"].with_transform(augment)
    if evaluation is not None:
        transform = augment if evaluation == "augmented" else SegmentationTransforms(
            processor, train=False, label_lookup=data.label_lookup)
        evaluation = data.dataset["validation"].with_transform(transform)
    values = dict(
        output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=5, learning_rate=3e-3, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=0, dataloader_pin_memory=False,
        distillation_points=["logits"],
    )
    values.update(overrides)
    args = DistillationArguments(**values)
    torch.manual_seed(0)
    teacher = SEGMENTATION_PRESETS["tiny-segformer"](data.id2label)
    student = SEGMENTATION_PRESETS["tiny-segformer"](data.id2label)
    return DistillationTrainer(
        model=student, teacher_model=teacher if args.method != "none" else None, args=args, train_dataset=train,
        eval_dataset=evaluation, data_collator=collate_segmentation, processing_class=processor,
    )


def _state(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


class _Snapshots(TrainerCallback):
    """Copies the Distiller's weights at train begin and every step end, and checks every module is back in train
    mode after the visualisation callback (added before this one) ran."""

    def __init__(self, trainer):
        self.trainer, self.states, self.all_training = trainer, {}, []

    def _take(self, state):
        distiller = self.trainer.accelerator.unwrap_model(self.trainer.model)
        self.states[state.global_step] = _state(distiller)
        self.all_training.append(all(module.training for module in distiller.modules()))

    def on_train_begin(self, args, state, control, **kwargs):
        self._take(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._take(state)


# ----------------------------------------------------------------------------------------------- one rendered run
@pytest.fixture(scope="module")
def rendered(data, tmp_path_factory):
    """5 steps, a render every 2: at step 0 (train begin), 2, 4 and 5 (the end)."""
    output_dir = tmp_path_factory.mktemp("rendered") / "out"
    # the paper's imitation-trained masks: they move within 5 steps (the default's budgeted spatial masks start
    # uniform and stay so while the fusion's attention is flat), so each render is pinned to its own step
    trainer = _make(data, output_dir, mask_objective="imitation")
    trainer.add_callback(MaskVisualizationCallback(trainer, every_n_steps=2, num_images=3, max_masks=3, tile_height=48))
    snapshots = _Snapshots(trainer)
    trainer.add_callback(snapshots)
    trainer.train()
    trainer.save_state()  # trainer_state.json for the figure script
    saved = {
        step: safetensors.numpy.load_file(str(output_dir / "mask_visualizations" / f"step-{step}" / "masks.safetensors"))
        for step in (0, 2, 4, 5)
    }
    return trainer, output_dir, snapshots, saved


def test_renders_at_start_every_n_steps_and_end_with_pngs_of_the_documented_size(rendered):
    _, output_dir, snapshots, _ = rendered
    folders = sorted(os.listdir(output_dir / "mask_visualizations"))
    assert folders == ["step-0", "step-2", "step-4", "step-5"]
    tile_h, tile_w = 48, 96  # 32x64 images at a tile height of 48
    for folder in folders:
        files = sorted(os.listdir(output_dir / "mask_visualizations" / folder))
        assert files == ["logits.png", "masks.safetensors"]
        with Image.open(output_dir / "mask_visualizations" / folder / "logits.png") as picture:
            # 3 images x (spatial row + channel row); image column + max_masks=3 of the M=4 masks
            assert picture.size == ((1 + 3) * tile_w, HEADER_HEIGHT + 3 * 2 * tile_h)
            assert picture.mode == "RGB"
            assert len(set(np.asarray(picture).reshape(-1, 3).view("V3").ravel().tolist())) > 50  # not blank
    assert all(snapshots.all_training), "a module was left in eval mode after a render"


def test_saved_masks_equal_the_loss_modules_run_on_the_same_batch(rendered, data):
    trainer, _, snapshots, saved = rendered
    distiller = trainer.accelerator.unwrap_model(trainer.model)
    processor = default_image_processor(IMAGE_SIZE)
    evaluation = data.dataset["validation"].with_transform(
        SegmentationTransforms(processor, train=False, label_lookup=data.label_lookup))
    pixel_values = torch.stack([evaluation[i]["pixel_values"] for i in range(3)])  # the first 3 eval images

    expected_images = ((pixel_values * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255)
    expected_images = expected_images.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    point_loss = distiller.distillation_loss.points["logits"]
    golden = {}
    final_state = _state(distiller)
    try:
        for step in (0, 2, 4, 5):
            distiller.load_state_dict(snapshots.states[step])
            distiller.eval()
            with torch.no_grad():
                teacher_logits = trainer.teacher(pixel_values=pixel_values).logits
                student_logits = distiller.student(pixel_values=pixel_values).logits
                masks = point_loss.masks(student_logits, teacher_logits)
            golden[step] = {kind: value.numpy() for kind, value in masks.items()}
    finally:
        distiller.load_state_dict(final_state)
        distiller.train()

    for step in (0, 2, 4, 5):
        assert saved[step]["logits.spatial"].shape == (3, NUM_CLASSES, 8, 16)  # SegFormer logits: stride 4
        assert saved[step]["logits.channel"].shape == (3, NUM_CLASSES, NUM_CLASSES)
        np.testing.assert_array_equal(saved[step]["images"], expected_images)
        for kind in ("spatial", "channel"):
            np.testing.assert_allclose(saved[step][f"logits.{kind}"], golden[step][kind], rtol=1e-5, atol=1e-7)
    # The masks move with training, so the comparison above pins each render to its own step.
    assert np.abs(golden[5]["spatial"] - golden[0]["spatial"]).mean() > 1e-4
    assert not np.allclose(saved[2]["logits.spatial"], golden[4]["spatial"], rtol=1e-5, atol=1e-7)


def _dice(masks):
    """Mean pairwise Dice over ordered pairs i != j and the batch, written out: masks (B, M, L)."""
    values = []
    for per_image in masks.astype(np.float64):
        for i in range(len(per_image)):
            for j in range(len(per_image)):
                if i != j:
                    a, b = per_image[i], per_image[j]
                    values.append(2 * (a * b).sum() / ((a * a).sum() + (b * b).sum()))
    return float(np.mean(values))


def test_logged_mask_change_and_dice_match_the_saved_masks(rendered):
    trainer, _, _, saved = rendered
    history = trainer.state.log_history
    mask_logs = {entry["step"]: entry for entry in history if "distill/logits/spatial_mask_dice" in entry}
    assert sorted(mask_logs) == [0, 2, 4, 5]
    assert "distill/logits/mask_change" not in mask_logs[0]  # nothing to compare the first render with
    for previous, step in ((0, 2), (2, 4), (4, 5)):
        entry = mask_logs[step]
        changes = {
            kind: np.abs(saved[step][f"logits.{kind}"].astype(np.float64) - saved[previous][f"logits.{kind}"]).mean()
            for kind in ("spatial", "channel")
        }
        assert entry["distill/logits/spatial_mask_change"] == pytest.approx(changes["spatial"], rel=1e-6)
        assert entry["distill/logits/channel_mask_change"] == pytest.approx(changes["channel"], rel=1e-6)
        assert entry["distill/logits/mask_change"] == pytest.approx((changes["spatial"] + changes["channel"]) / 2, rel=1e-6)
        assert entry["distill/logits/mask_change"] > 0
    for step in (0, 5):
        spatial = saved[step]["logits.spatial"].reshape(3, NUM_CLASSES, -1)
        assert mask_logs[step]["distill/logits/spatial_mask_dice"] == pytest.approx(_dice(spatial), rel=1e-6)
        assert mask_logs[step]["distill/logits/channel_mask_dice"] == pytest.approx(_dice(saved[step]["logits.channel"]), rel=1e-6)
    # The trainer's own training logs are untouched: one per step, each with the loss terms; the mask logs carry
    # no "loss" (which would make DistillationTrainer.log flush its term sums into them).
    training_logs = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in training_logs] == [1, 2, 3, 4, 5]
    assert all("distill/logits/spatial" in entry and "task_loss" in entry for entry in training_logs)
    assert not any("loss" in entry for entry in mask_logs.values())


def test_figure_script_writes_a_png(rendered, tmp_path):
    _, output_dir, _, _ = rendered
    figure = tmp_path / "figures" / "evolution.png"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "plot_mask_evolution.py"), str(output_dir), "--num_steps", "3",
         "--num_masks", "2", "--scale", "log", "--output", str(figure)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(figure)
    with Image.open(figure) as picture:
        width, height = picture.size
        assert width > 400 and height > 400
    missing = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "plot_mask_evolution.py"), str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode != 0 and "MaskVisualizationCallback" in missing.stderr


# ----------------------------------------------------------------------------------------------- invariance
class _DrawsRandomNumbers(TrainerCallback):
    """Negative control: a callback that moves torch's RNG at every step end."""

    def on_step_end(self, args, state, control, **kwargs):
        torch.rand(1)


def test_training_is_bit_identical_with_and_without_the_callback(data, tmp_path):
    """The eval set is read through random augmentations, so fixing the batch draws from the global RNG: the callback
    must fork it (as it does around its forward passes). A render after every step. The SegFormers' dropout makes
    training depend on the RNG (see the control)."""
    results = {}
    for variant in ("without", "with", "control"):
        trainer = _make(data, tmp_path / variant, evaluation="augmented", max_steps=4)
        if variant == "with":
            trainer.add_callback(MaskVisualizationCallback(trainer, every_n_steps=1, num_images=2))
        if variant == "control":
            trainer.add_callback(_DrawsRandomNumbers())
        trainer.train()
        results[variant] = _state(trainer.accelerator.unwrap_model(trainer.model))
    assert sorted(os.listdir(tmp_path / "with" / "mask_visualizations")) == [f"step-{s}" for s in range(5)]
    for name, tensor in results["without"].items():
        assert torch.equal(results["with"][name], tensor), name
    # The check can fail: moving the RNG during training changes the augmentations and so the weights.
    assert any(not torch.equal(results["control"][name], tensor) for name, tensor in results["without"].items())


# ----------------------------------------------------------------------------------------------- TensorBoard
def test_images_and_numbers_reach_tensorboard(data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _make(data, tmp_path / "out", max_steps=3, report_to=["tensorboard"])
    trainer.add_callback(MaskVisualizationCallback(trainer, every_n_steps=2, num_images=2))
    trainer.train()
    event_files = glob.glob(str(tmp_path / "out" / "**" / "events.out.tfevents*"), recursive=True)
    assert event_files
    images, scalars = {}, {}
    for path in event_files:
        events = EventAccumulator(path, size_guidance={"images": 0, "scalars": 0})
        events.Reload()
        for tag in events.Tags()["images"]:
            images.setdefault(tag, []).extend(event.step for event in events.Images(tag))
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(event.step for event in events.Scalars(tag))
    assert sorted(images["mask_visualizations/logits"]) == [0, 2, 3]
    assert sorted(scalars["train/distill/logits/mask_change"]) == [2, 3]


# ----------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("method", ["mse", "none"])
def test_methods_without_masks_are_refused(data, tmp_path, method):
    trainer = _make(data, tmp_path / "out", method=method)
    with pytest.raises(ValueError, match=rf"method '{method}' has none: use method 'acamkd'"):
        MaskVisualizationCallback(trainer, every_n_steps=2)


def test_bad_settings_are_refused(data, tmp_path):
    trainer = _make(data, tmp_path / "out")
    with pytest.raises(ValueError, match="every_n_steps"):
        MaskVisualizationCallback(trainer, every_n_steps=0)
    with pytest.raises(ValueError, match="num_images"):
        MaskVisualizationCallback(trainer, every_n_steps=1, num_images=0)


# ----------------------------------------------------------------------------------------------- rendering
def test_rendering_shows_values_on_an_absolute_scale():
    images = np.full((1, 8, 16, 3), 128, dtype=np.uint8)
    spatial = np.stack([np.zeros((4, 8)), np.ones((4, 8))])[None]  # (1, 2, 4, 8): mask 1 all 0, mask 2 all 1
    picture = np.asarray(render_point_masks(images, spatial, None, tile_height=48))
    assert picture.shape == (HEADER_HEIGHT + 48, 3 * 96, 3)  # no channel masks: one row per image
    off, on = picture[HEADER_HEIGHT + 40, 96 + 48], picture[HEADER_HEIGHT + 40, 192 + 48]  # below the corner labels
    assert on[1] > off[1] + 80 and on[2] < off[2]  # yellow (1) vs purple (0) over the same grey image

    bars = channel_bar_image(np.array([0.0, 1.0, 0.5, 0.25]), height=21, width=40)  # 10 columns per channel
    filled = (np.abs(bars.astype(int) - 24).sum(axis=2) > 0) & (np.abs(bars.astype(int) - 90).sum(axis=2) > 0)
    heights = filled.sum(axis=0)
    assert heights[0:9].max() == 0 and heights[10:19].min() == 20 and heights[20:29].min() == 10
    assert heights[30:39].min() == 5 and heights[9] == 0  # 1-pixel gap after each bar


def test_default_image_mean_and_std_are_the_processors_imagenet_values():
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    assert tuple(IMAGENET_DEFAULT_MEAN) == DEFAULT_IMAGE_MEAN and tuple(IMAGENET_DEFAULT_STD) == DEFAULT_IMAGE_STD


def test_figure_script_and_rendering_module_load_neither_torch_nor_transformers():
    """scripts/plot_mask_evolution.py (run to its --help) and acamkd_hf.mask_rendering need numpy and PIL only."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{str(REPO / 'scripts' / 'plot_mask_evolution.py')!r}, '--help']\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "import acamkd_hf.mask_rendering\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'torch', 'transformers'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "run_dir" in result.stdout  # the --help text was printed
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_without_an_eval_set_the_batch_comes_from_the_train_set(data, tmp_path):
    trainer = _make(data, tmp_path / "out", evaluation=None, max_steps=1)
    trainer.add_callback(MaskVisualizationCallback(trainer, every_n_steps=1, num_images=2))
    trainer.train()
    saved = safetensors.numpy.load_file(str(tmp_path / "out" / "mask_visualizations" / "step-1" / "masks.safetensors"))
    first_two = torch.stack([trainer.train_dataset[i]["pixel_values"] for i in range(2)])
    expected = ((first_two * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255)
    expected = expected.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(saved["images"], expected)


def test_the_training_flag_adds_the_callback_for_acamkd_only(data, tmp_path):
    """`--mask_visualization_steps N` is how users turn it on (scripts/distill.py passes every flag through)."""
    trainer = _make(data, tmp_path / "on", mask_visualization_steps=3, mask_visualization_images=2)
    callbacks = [c for c in trainer.callback_handler.callbacks if isinstance(c, MaskVisualizationCallback)]
    assert len(callbacks) == 1 and callbacks[0].every_n_steps == 3 and callbacks[0].num_images == 2
    plain = _make(data, tmp_path / "off")
    assert not any(isinstance(c, MaskVisualizationCallback) for c in plain.callback_handler.callbacks)
    baseline = _make(data, tmp_path / "mse", method="mse", mask_visualization_steps=3)
    assert not any(isinstance(c, MaskVisualizationCallback) for c in baseline.callback_handler.callbacks)
    with pytest.raises(ValueError, match="--mask_visualization_steps must be >= 0"):
        DistillationArguments(output_dir=str(tmp_path), mask_visualization_steps=-1)
