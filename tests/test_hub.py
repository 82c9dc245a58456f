"""Model card and Hub push of a distilled student, from a real tiny run of acamkd-distill (in-process, with the Hub
calls patched: the Hub is unreachable here, and tests must not push anywhere)."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects

from acamkd_hf import cli, hub
from acamkd_hf.hub import HubPushError, push_student

SECRET = "hf_FAKE_secret_token_0123456789"
REPO_ID = "someone/tiny-segformer-acamkd"
# What a push must upload: the student's files and the run's record, written out here, not computed by hub.py.
EXPECTED_UPLOAD = {
    "README.md", "config.json", "model.safetensors", "preprocessor_config.json", "run_config.json", "metrics.json",
    "trainer_state.json", "all_results.json", "train_results.json", "eval_results.json", "training_args.json",
}


class RecordingHub:
    """Stands in for the Hub: records what would have been created and uploaded."""

    def __init__(self):
        self.created, self.uploaded_folders, self.uploaded_files = [], [], []

    def patches(self):
        def create_repo(api, repo_id, **kwargs):
            self.created.append((repo_id, kwargs.get("private"), api.token))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(api, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
            every_file = [str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()]
            # huggingface_hub's own filter decides what upload_folder sends
            sent = set(filter_repo_objects(every_file, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
            self.uploaded_folders.append((repo_id, sent))

        def upload_file(api, *, path_or_fileobj, path_in_repo, repo_id, **kwargs):
            self.uploaded_files.append((repo_id, path_in_repo, str(path_or_fileobj)))

        return [
            mock.patch.object(HfApi, "create_repo", create_repo),
            mock.patch.object(HfApi, "upload_folder", upload_folder),
            mock.patch.object(HfApi, "upload_file", upload_file),
        ]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny distillation run with --push_to_hub (patched Hub) and a token given on the command line."""
    root = tmp_path_factory.mktemp("run")
    recorder = RecordingHub()
    patches = recorder.patches()
    for patch in patches:
        patch.start()
    try:
        results = cli.run([
            "--output_dir", str(root / "student"), "--synthetic_dir", str(root / "data"),
            "--synthetic_num_train", "12", "--synthetic_num_val", "4", "--num_train_epochs", "1",
            "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--save_strategy", "epoch",
            "--push_to_hub", "true", "--hub_model_id", REPO_ID, "--hub_token", SECRET, "--hub_private_repo", "true",
        ])
    finally:
        for patch in patches:
            patch.stop()
    return root / "student", results, recorder


def test_card_parses_back_and_holds_the_measured_metrics(run):
    out, results, _ = run
    card = ModelCard.load(out / "README.md")
    metrics = json.loads((out / "metrics.json").read_text())
    by_type = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert by_type["mean_iou"] == pytest.approx(metrics["student"]["eval_mean_iou"], abs=0)
    assert by_type["overall_accuracy"] == pytest.approx(metrics["student"]["eval_overall_accuracy"], abs=0)
    assert by_type["mean_iou"] == pytest.approx(results["student"]["eval_mean_iou"], abs=0)
    assert all(r.task_type == "image-segmentation" and r.dataset_split == "validation" for r in card.data.eval_results)
    assert {"knowledge-distillation", "acam-kd", "image-segmentation", "segformer"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "image-segmentation" and card.data.library_name == "transformers"


def test_card_names_teacher_method_settings_budget_and_baseline(run):
    out, _, _ = run
    card = ModelCard.load(out / "README.md")
    run_config = json.loads((out / "run_config.json").read_text())
    teacher_dir = str(out) + "_teacher"
    assert card.data.teacher_model == teacher_dir and card.data.distillation_method == "acamkd"
    text = card.text
    assert "small-segformer (trained by this run" in text and "**ACAM-KD**" in text
    # Every distillation setting is there, with the values the run used (defaults resolved, not None).
    assert run_config["distillation"]["num_masks"] == 8 and run_config["distillation"]["alpha"] == 1.0
    for name, value in run_config["distillation"].items():
        if name != "teacher":
            assert f"| `{name}` | `{value}` |" in text
    assert "student alone (no distillation)" in text  # the default recipe trains it
    assert "optimizer steps | 3" in text and "4 per device x 1 process(es) x 1 accumulation" in text
    assert f'from_pretrained("{REPO_ID}")' in text and "@inproceedings{lan2025acamkd" in text
    assert "synthetic" in text  # limitations say what it was trained on


def test_the_card_written_from_memory_is_the_one_rerendered_from_the_folder(run):
    """The run renders its card from its record in memory; acamkd-push re-renders it from the files: the same card."""
    out, _, _ = run
    assert str(hub.build_model_card(out, REPO_ID)) == (out / "README.md").read_text()


def test_script_push_uploads_exactly_the_student_and_its_record(run):
    out, _, recorder = run
    assert recorder.created == [(REPO_ID, True, SECRET)]
    [(repo_id, sent)] = recorder.uploaded_folders
    assert repo_id == REPO_ID
    assert sent == EXPECTED_UPLOAD
    assert any(p.name.startswith("checkpoint-") for p in out.iterdir())  # checkpoints exist but were not sent
    assert recorder.uploaded_files == []  # no distillation modules unless asked


def test_distillation_modules_only_when_asked(run):
    out, _, _ = run
    recorder = RecordingHub()
    patches = recorder.patches()
    for patch in patches:
        patch.start()
    try:
        push_student(out, REPO_ID, token=SECRET, include_distillation_modules=True)
    finally:
        for patch in patches:
            patch.stop()
    [(_, sent)] = recorder.uploaded_folders
    assert sent == EXPECTED_UPLOAD
    [(repo_id, path_in_repo, local)] = recorder.uploaded_files
    assert path_in_repo == "distillation_modules.safetensors"
    assert Path(local).parent.name.startswith("checkpoint-") and Path(local).is_file()


def test_no_token_is_a_clear_error_and_nothing_is_lost(run, monkeypatch):
    out, _, _ = run
    before = sorted(p.name for p in out.iterdir())
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(HubPushError, match=r"no Hugging Face token: log in with `hf auth login` or set HF_TOKEN"):
        push_student(out, REPO_ID)
    assert sorted(p.name for p in out.iterdir()) == before


def test_unreachable_hub_is_a_clear_error_that_never_shows_the_token(run):
    out, _, _ = run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def offline(api, repo_id, **kwargs):
        raise ConnectionError(f"Failed to resolve huggingface.co (Authorization: Bearer {SECRET})")

    with mock.patch.object(HfApi, "create_repo", offline):
        with pytest.raises(HubPushError) as caught:
            push_student(out, REPO_ID, token=SECRET)
    message = str(caught.value)
    assert "could not push" in message and "scripts/push_to_hub.py" in message and "ConnectionError" in message
    assert SECRET not in message
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_the_token_is_stored_nowhere(run):
    out, _, _ = run
    for folder in (out, Path(str(out) + "_teacher"), Path(str(out) + "_student_alone")):
        for path in folder.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


def test_a_folder_that_is_not_a_run_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="not the output folder of a finished scripts/distill.py run"):
        hub.build_model_card(tmp_path)


def _push_script(args, tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")  # no stored login
    script = Path(__file__).resolve().parents[1] / "scripts" / "push_to_hub.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=120)


def test_push_script_dry_run_lists_the_files_and_no_token_fails_cleanly(run, tmp_path):
    out, _, _ = run
    listed = _push_script([str(out), REPO_ID, "--dry_run"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == EXPECTED_UPLOAD
    refused = _push_script([str(out), REPO_ID], tmp_path)
    assert refused.returncode == 1
    assert "error: no Hugging Face token" in refused.stderr and "Traceback" not in refused.stderr
