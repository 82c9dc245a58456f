"""Crash safety: a SIGKILLed run resumes to the uninterrupted result, a half-written checkpoint is never resumed,
a non-finite loss stops the run naming the term, point and step (keeping the last good checkpoint), and
augmentations are seeded per example so that a mid-epoch resume reads exactly the same images."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers.trainer_utils import get_last_checkpoint

from acamkd_hf import DistillationArguments, DistillationTrainer
from acamkd_hf.checkpointing import PARTIAL_CHECKPOINTS_DIR, NonFiniteLossError
from acamkd_hf.data import collate_segmentation, load_cityscapes, make_synthetic_cityscapes
from acamkd_hf.models import SEGMENTATION_PRESETS
from acamkd_hf.placement import convert_to_sync_batchnorm
from acamkd_hf.seeding import PerExampleSeededDataset, example_seed

REPO = Path(__file__).resolve().parents[1]
KILLABLE = REPO / "tests" / "workers" / "distill_killed_at.py"


# ----------------------------------------------------------------------------------------------- SIGKILL
def _run(script, tmp_path, output_dir, **env):
    flags = [
        "--teacher", "tiny-segformer", "--student", "tiny-segformer", "--synthetic_dir", str(tmp_path / "data"),
        "--synthetic_num_train", "16", "--synthetic_num_val", "4", "--per_device_train_batch_size", "2",
        "--max_steps", "12", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "2",
        "--logging_steps", "1", "--disable_tqdm", "true", "--compare_student_alone", "false",
        "--report_to", "none", "--output_dir", str(output_dir),
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.run(
        [sys.executable, str(script), *flags], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600
    )


def _tensors(path):
    return load_file(str(path))


@pytest.mark.slow
def test_sigkill_mid_checkpoint_and_mid_step_then_rerun_equals_uninterrupted(tmp_path):
    """Real processes killed with SIGKILL: once while writing checkpoint-8, once at the start of step 10 (mid-epoch:
    8 steps per epoch). Rerunning the same command resumes each time and ends bit-identical to a run never killed."""
    straight = _run(REPO / "scripts" / "distill.py", tmp_path, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    crashed = tmp_path / "crashed"
    first = _run(KILLABLE, tmp_path, crashed, KILL_AT_STEP="8", KILL_DURING="checkpoint")
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    partial = crashed / PARTIAL_CHECKPOINTS_DIR / "checkpoint-8"
    assert (partial / "model.safetensors").is_file() and not (partial / "trainer_state.json").exists()
    assert not (crashed / "checkpoint-8").exists()
    assert get_last_checkpoint(str(crashed)) == str(crashed / "checkpoint-6")  # never the half-written one

    second = _run(KILLABLE, tmp_path, crashed, KILL_AT_STEP="9", KILL_DURING="step")
    assert second.returncode == -signal.SIGKILL, second.stderr[-3000:]
    assert "resuming the interrupted run from " + str(crashed / "checkpoint-6") in second.stderr
    assert not partial.exists()  # the leftover was cleared by the next checkpoint write
    assert sorted(p.name for p in crashed.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]

    third = _run(REPO / "scripts" / "distill.py", tmp_path, crashed)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "resuming the interrupted run from " + str(crashed / "checkpoint-8") in third.stderr

    for name in ("model.safetensors", "checkpoint-12/distillation_modules.safetensors"):
        expected, got = _tensors(tmp_path / "straight" / name), _tensors(crashed / name)
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.equal(expected[key], got[key]), f"{name}: {key}"
    losses = [
        [entry["loss"] for entry in json.loads((folder / "trainer_state.json").read_text())["log_history"] if "loss" in entry]
        for folder in (tmp_path / "straight", crashed)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 12
    assert not (crashed / PARTIAL_CHECKPOINTS_DIR).exists()


# ----------------------------------------------------------------------------------------------- in-process set-up
IMAGE_SIZE = (32, 64)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_synthetic_cityscapes(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=2, image_size=IMAGE_SIZE, num_classes=4, seed=0
    )
    return load_cityscapes(root)


def _trainer(data, tmp_path, teacher=None, eval_dataset=None, **overrides):
    from acamkd_hf.data import SegmentationTransforms
    from acamkd_hf.models import default_image_processor

    processor = default_image_processor(IMAGE_SIZE)
    train = data.dataset["train"].with_transform(
        SegmentationTransforms(processor, train=True, crop_size=IMAGE_SIZE, label_lookup=data.label_lookup)
    )
    torch.manual_seed(0)
    teacher = teacher or SEGMENTATION_PRESETS["tiny-segformer"](data.id2label)
    student = SEGMENTATION_PRESETS["tiny-segformer"](data.id2label)
    values = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=4, learning_rate=1e-3,
        logging_steps=1, save_strategy="steps", save_steps=2, report_to="none", disable_tqdm=True, use_cpu=True,
        seed=0, dataloader_pin_memory=False, distillation_points=["logits"],
    )  # fmt: skip
    values.update(overrides)
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=DistillationArguments(**values), train_dataset=train,
        data_collator=collate_segmentation, processing_class=processor, eval_dataset=eval_dataset,
    )  # fmt: skip


def _logits_become_inf_from_call(teacher: nn.Module, start: int) -> nn.Module:
    """The teacher's logits become +inf from its `start`-th forward on (a numerical blow-up, made on purpose)."""
    calls = []

    def hook(module, inputs, output):
        calls.append(1)
        return torch.full_like(output, float("inf")) if len(calls) >= start else output

    teacher.decode_head.classifier.register_forward_hook(hook)
    return teacher


# ----------------------------------------------------------------------------------------------- NaN / inf
def test_non_finite_loss_stops_naming_term_point_and_step_and_keeps_the_last_checkpoint(data, tmp_path):
    torch.manual_seed(0)
    teacher = _logits_become_inf_from_call(SEGMENTATION_PRESETS["tiny-segformer"](data.id2label), start=4)  # 1: probe
    trainer = _trainer(data, tmp_path, teacher=teacher, max_steps=6)
    with pytest.raises(NonFiniteLossError) as raised:
        trainer.train()
    message = str(raised.value)
    assert "at step 3" in message
    assert "distill/logits/channel=" in message and "distill/logits/spatial=" in message
    assert "distillation point logits" in message
    assert "task_loss" not in message  # the student's own loss stayed finite
    last = tmp_path / "out" / "checkpoint-2"
    assert f"the last good checkpoint is {last}" in message
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2"]
    weights = _tensors(last / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_a_checkpoint_of_non_finite_weights_is_refused(data, tmp_path):
    trainer = _trainer(data, tmp_path, max_steps=2)
    trainer.train()
    with torch.no_grad():
        next(trainer.distillation_modules.parameters()).fill_(float("nan"))
    trainer.state.global_step = 4
    with pytest.raises(NonFiniteLossError, match=r"parameter distillation_loss\.points\.logits\..* is not finite at step 4"):
        trainer._save_checkpoint(trainer.model, trial=None)
    assert not (tmp_path / "out" / "checkpoint-4").exists()
    assert get_last_checkpoint(str(tmp_path / "out")) == str(tmp_path / "out" / "checkpoint-2")


def test_saving_the_same_step_again_replaces_the_checkpoint_whole(data, tmp_path):
    trainer = _trainer(data, tmp_path, max_steps=2)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    (checkpoint / "stale-file").write_text("from an older write")
    trainer._save_checkpoint(trainer.model, trial=None)
    assert not (checkpoint / "stale-file").exists() and (checkpoint / "trainer_state.json").is_file()
    assert not (tmp_path / "out" / PARTIAL_CHECKPOINTS_DIR).exists()


# ----------------------------------------------------------------------------------------------- seeding
def test_per_example_seeding_depends_only_on_seed_epoch_and_index():
    draws = PerExampleSeededDataset(_RandomDraws(), seed=7)
    before = torch.random.get_rng_state()
    first = [draws[index] for index in (3, 5, 1)]
    assert torch.equal(torch.random.get_rng_state(), before)  # the run's own RNG did not move
    again = [draws[index] for index in (1, 5, 3)][::-1]  # another order: the same draws
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    torch.manual_seed(0)
    assert torch.equal(draws[3], first[0])  # whatever the global state
    torch.manual_seed(example_seed(7, 0, 3))
    assert torch.equal(torch.rand(4), first[0])  # golden: the global RNG seeded from (seed, epoch, index)
    draws.set_epoch(1)
    assert not torch.equal(draws[3], first[0])  # a new epoch, new augmentations
    assert len({example_seed(0, epoch, index) for epoch in range(3) for index in range(100)}) == 300


class _RandomDraws(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        return torch.rand(4)


# ----------------------------------------------------------------------------------------------- SyncBatchNorm
def test_sync_batchnorm_converts_for_several_gpus_and_saves_as_the_plain_model(data, tmp_path):
    from transformers import AutoModelForSemanticSegmentation

    student = SEGMENTATION_PRESETS["tiny-segformer"](data.id2label)
    names = {name for name, module in student.named_modules() if isinstance(module, nn.BatchNorm2d)}
    assert names
    assert convert_to_sync_batchnorm(student, world_size=1, device=torch.device("cuda")) is student  # one process
    with pytest.raises(ValueError, match="--sync_batchnorm needs GPUs.*Drop --sync_batchnorm"):
        convert_to_sync_batchnorm(student, world_size=2, device=torch.device("cpu"))
    before = {key: value.clone() for key, value in student.state_dict().items()}
    converted = convert_to_sync_batchnorm(student, world_size=2, device=torch.device("cuda"))
    modules = dict(converted.named_modules())
    assert all(isinstance(modules[name], nn.SyncBatchNorm) for name in names)
    assert converted.state_dict().keys() == before.keys()
    converted.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "student")
    reloaded_modules = dict(reloaded.named_modules())
    assert all(type(reloaded_modules[name]) is nn.BatchNorm2d for name in names)
    assert all(torch.equal(reloaded.state_dict()[key], before[key]) for key in before)


# ----------------------------------------------------------------------------------------------- teacher placement
def test_the_teacher_is_placed_whole_on_the_students_device_frozen_and_zero3_is_refused(data, tmp_path):
    from types import SimpleNamespace

    from acamkd_hf.placement import place_teacher

    trainer = _trainer(data, tmp_path, max_steps=1)
    assert {p.device for p in trainer.teacher.parameters()} == {trainer.accelerator.device}
    assert not trainer.teacher.training and not any(p.requires_grad for p in trainer.teacher.parameters())
    assert all(id(p) not in {id(q) for q in trainer.model.parameters()} for p in trainer.teacher.parameters())
    zero3 = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)), device=torch.device("cpu"))
    with pytest.raises(ValueError, match="ZeRO-3 would partition the teacher.*Use ZeRO-2"):
        place_teacher(trainer.teacher, zero3)


def test_the_best_checkpoint_is_recorded_under_its_final_name_and_survives_rotation(data, tmp_path):
    """With load_best_model_at_end, the Trainer records the best checkpoint while it is still in the staging folder;
    the record must name the published folder (in the state and in the checkpoint's own trainer_state.json)."""
    from acamkd_hf.data import SegmentationTransforms
    from acamkd_hf.models import default_image_processor

    validation = data.dataset["validation"].with_transform(
        SegmentationTransforms(default_image_processor(IMAGE_SIZE), train=False, label_lookup=data.label_lookup)
    )
    trainer = _trainer(data, tmp_path, eval_dataset=validation, max_steps=6, eval_strategy="steps", eval_steps=2,
                       save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="loss")
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    assert best.parent == tmp_path / "out" and best.is_dir() and PARTIAL_CHECKPOINTS_DIR not in str(best)
    recorded = json.loads((best / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert recorded == str(best)
    assert not (tmp_path / "out" / PARTIAL_CHECKPOINTS_DIR).exists()
