"""Model card and Hub push of a distilled student, from a real tiny run of acamkd-distill (in-process, with the Hub
calls patched: the Hub is unreachable here, and tests must not push anywhere)."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from unittest import mock

import pytest
from huggingface_hub import HfApi, ModelCard

from acamkd_hf import cli, hub, model_sources, run_record
from acamkd_hf.hub import HubPushError, model_card, push_student, upload_contents

SECRET = "hf_FAKE_secret_token_0123456789"
REPO_ID = "someone/tiny-segformer-acamkd"
# What a push must upload: the student's files and the run's record, written out here, not computed by hub.py.
EXPECTED_UPLOAD = {
    "README.md", "config.json", "model.safetensors", "preprocessor_config.json", "run_config.json", "metrics.json",
    "trainer_state.json", "all_results.json", "train_results.json", "eval_results.json", "training_args.json",
}


class RecordingHub:
    """Stands in for the Hub: records what would have been created and committed (path in the repo -> the local
    file it comes from, or the bytes sent)."""

    def __init__(self):
        self.created, self.commits = [], []

    def patches(self):
        def create_repo(api, repo_id, **kwargs):
            self.created.append((repo_id, kwargs.get("private"), api.token))
            return f"https://huggingface.co/{repo_id}"

        def create_commit(api, *, repo_id, operations, **kwargs):
            self.commits.append((repo_id, {op.path_in_repo: op.path_or_fileobj for op in operations}))

        return [
            mock.patch.object(HfApi, "create_repo", create_repo),
            mock.patch.object(HfApi, "create_commit", create_commit),
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
    # The teacher trained here is a local folder: named, never by its path.
    assert card.data.teacher_model == "student_teacher (local folder)" and card.data.distillation_method == "acamkd"
    text = card.text
    assert "small-segformer (trained by this run, saved in the local folder student_teacher)" in text and "**ACAM-KD**" in text
    # Every distillation setting is there, with the values the run used (defaults resolved, not None).
    assert run_config["distillation"]["num_masks"] == 8 and run_config["distillation"]["alpha"] == 1.0
    for name, value in run_config["distillation"].items():
        if name != "teacher":
            assert f"| `{name}` | `{value}` |" in text
    assert "student alone (no distillation)" in text  # the default recipe trains it
    # Which ACAM-KD variant, and why (the default: recommended, with standardised features and a reduced fusion).
    assert "Variant: **recommended**" in text and "standardised per channel and image" in text and "adversarial" in text
    assert run_config["distillation"]["imitation_standardize"] is True
    assert run_config["distillation"]["fusion_kv_reduction"] == "auto"
    assert "optimizer steps | 3" in text and "4 per device x 1 process(es) x 1 accumulation" in text
    # Before a push the snippet loads the local folder (outside the working directory here: by its name).
    assert 'from_pretrained("student")' in text and "@inproceedings{lan2025acamkd" in text
    assert "synthetic" in text  # limitations say what it was trained on


def test_the_card_written_from_memory_is_the_one_rerendered_from_the_folder(run):
    """The run renders its card from its record in memory; acamkd-push re-renders it from the files: the same card."""
    out, _, _ = run
    local = hub.build_model_card(out, REPO_ID, model_path=run_record.local_model_path(str(out)))
    assert str(local) == (out / "README.md").read_text()


def test_script_push_uploads_exactly_the_student_and_its_record(run):
    out, _, recorder = run
    assert recorder.created == [(REPO_ID, True, SECRET)]
    [(repo_id, sent)] = recorder.commits  # one commit
    assert repo_id == REPO_ID
    assert set(sent) == EXPECTED_UPLOAD  # no distillation modules unless asked
    assert all(sent[name] == str(out / name) for name in EXPECTED_UPLOAD if not name.endswith((".md", ".json")))
    # The records are sent as they are, but for absolute local paths (output, data and teacher folders).
    for name in EXPECTED_UPLOAD:
        if name.endswith(".json"):
            sent_text = sent[name].decode() if isinstance(sent[name], bytes) else Path(sent[name]).read_text()
            assert str(out.parent) not in sent_text, name
    public = json.loads(sent["run_config.json"].decode())
    assert public["training"]["output_dir"] == "<local>/student"
    assert public["distillation"]["teacher"] == "<local>/student_teacher"
    assert any(p.name.startswith("checkpoint-") for p in out.iterdir())  # checkpoints exist but were not sent
    # The pushed card loads the Hub id; the local one keeps the local path (the push wrote nothing locally).
    pushed = sent["README.md"].decode()
    assert f'from_pretrained("{REPO_ID}")' in pushed and 'from_pretrained("student")' not in pushed
    assert 'from_pretrained("student")' in (out / "README.md").read_text()


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
    [(_, sent)] = recorder.commits
    assert set(sent) == EXPECTED_UPLOAD | {"distillation_modules.safetensors"}
    local = Path(sent["distillation_modules.safetensors"])
    assert local.parent.name.startswith("checkpoint-") and local.is_file()


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

    with mock.patch.object(HfApi, "create_repo", offline), pytest.raises(HubPushError) as caught:
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


def _snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file below ``folder``: (mtime, mode, bytes)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_mode, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_script_dry_run_lists_the_files_and_no_token_fails_cleanly(run, tmp_path):
    out, _, _ = run
    before = _snapshot(out)
    listed = _push_script([str(out), REPO_ID, "--dry_run", "--private"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == (f"would push to https://huggingface.co/{REPO_ID} as a private repository: "
                        f"{len(EXPECTED_UPLOAD)} files, nothing uploaded")
    files = {line.split()[0]: line.split()[1:] for line in lines[1:len(EXPECTED_UPLOAD) + 1]}
    assert set(files) == EXPECTED_UPLOAD
    weights = (out / "model.safetensors").stat().st_size / 1024**2
    assert files["model.safetensors"] == [f"{weights:.1f}", "MB"]  # each file with its size
    card = listed.stdout.split("README.md (the model card):", 1)[1]
    assert f'from_pretrained("{REPO_ID}")' in card and str(out) not in listed.stdout  # the card as pushed, no local path
    refused = _push_script([str(out), REPO_ID], tmp_path)
    assert refused.returncode == 1
    assert "error: no Hugging Face token" in refused.stderr and "Traceback" not in refused.stderr
    assert _snapshot(out) == before  # neither rewrote the card (or anything else)


def test_a_push_never_modifies_the_local_folder(run):
    out, _, _ = run
    before = _snapshot(out)
    recorder = RecordingHub()
    patches = recorder.patches()
    for patch in patches:
        patch.start()
    try:
        push_student(out, "someone-else/another-name", token=SECRET)
    finally:
        for patch in patches:
            patch.stop()
    [(_, sent)] = recorder.commits
    assert 'from_pretrained("someone-else/another-name")' in sent["README.md"].decode()
    assert _snapshot(out) == before


def test_the_card_holds_no_absolute_local_path(run):
    """Neither the local card nor the pushed one: the teacher is a folder name, the dataset its layout, the usage
    snippet a path relative to where the run started."""
    out, _, recorder = run
    run_config = json.loads((out / "run_config.json").read_text())
    local_paths = {str(out.parent), str(out.parent.resolve()), run_config["data"]["dataset"]}
    [(_, sent)] = recorder.commits
    for text in ((out / "README.md").read_text(), sent["README.md"].decode()):
        assert not [path for path in local_paths if path in text]
        metadata = text.split("---")[1]
        assert not [line for line in metadata.splitlines() if ": /" in line or ": ~" in line]


def test_the_weights_have_the_permissions_of_the_other_files(run):
    """safetensors >= 0.8 writes through a 0600 temporary file; the run gives the weights the mode a new file gets."""
    out, _, _ = run
    for folder in (out, Path(str(out) + "_teacher"), next(out.glob("checkpoint-*"))):
        mode = stat.S_IMODE((folder / "config.json").stat().st_mode)
        for weights in folder.glob("*.safetensors"):
            assert stat.S_IMODE(weights.stat().st_mode) == mode, weights


def _record(out: Path, **changes) -> tuple[dict, dict]:
    run_config = json.loads((out / "run_config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    for section, values in changes.items():
        run_config[section] = {**run_config[section], **values}
    return run_config, metrics


def test_the_dataset_is_named_honestly(run, tmp_path):
    """The synthetic marker is honoured however the folder is passed; a local folder is named by its layout (a
    folder called coco is not COCO); a Hub dataset by its id, also in the `datasets` metadata."""
    from acamkd_hf.data import make_synthetic_coco
    from acamkd_hf.tasks import dataset_origin

    out, _, _ = run
    coco = make_synthetic_coco(tmp_path / "coco", num_train=2, num_val=1, image_size=(32, 32))
    assert dataset_origin(str(coco)) == {"origin": "synthetic", "layout": "COCO"}
    (coco / "synthetic.json").unlink()
    assert dataset_origin(str(coco)) == {"origin": "local", "layout": "COCO"}
    assert dataset_origin("someone/street-scenes") == {"origin": "hub", "layout": None}

    cases = {
        ("synthetic", "Cityscapes"): ("a synthetic Cityscapes-layout dataset (made by acamkd-hf)", None),
        ("local", "Cityscapes"): ("a local Cityscapes-layout dataset", None),
        ("local", None): ("a local dataset", None),
        ("hub", None): ("someone/street-scenes", ["someone/street-scenes"]),
    }
    for (origin, layout), (name, datasets) in cases.items():
        dataset = "someone/street-scenes" if origin == "hub" else str(tmp_path / "cityscapes")
        run_config, metrics = _record(out, data={"dataset": dataset, "origin": origin, "layout": layout,
                                                 "synthetic": origin == "synthetic"})
        card = hub.model_card(run_config, metrics, repo_id=REPO_ID, model_type="segformer")
        assert {r.dataset_name for r in card.data.eval_results} == {name}
        assert card.data.datasets == datasets
        assert f"on {name}" in card.text and str(tmp_path) not in str(card)


def test_license_and_base_model_where_known(run, tmp_path):
    from acamkd_hf.models import SEGMENTATION_PRESETS

    out, _, _ = run
    run_config, metrics = _record(out, model={"student": "nvidia/mit-b0", "student_base_model": "nvidia/mit-b0",
                                              "student_license": "other"})
    card = hub.model_card(run_config, metrics, repo_id=REPO_ID, model_type="segformer")
    assert (card.data.base_model, card.data.license) == ("nvidia/mit-b0", "other")
    run_config, metrics = _record(out)  # a preset trained from scratch: nothing is known
    card = hub.model_card(run_config, metrics, repo_id=REPO_ID, model_type="segformer")
    assert card.data.base_model is None and card.data.license is None
    # A local student folder whose card states a license; timm's license for a DeepLabV3 preset's ImageNet backbone.
    folder = tmp_path / "student"
    SEGMENTATION_PRESETS["tiny-segformer"]({0: "a"}).save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a student\n")
    assert model_sources.known_license(str(folder)) == "apache-2.0"
    model_args = cli.ModelArguments(student="deeplabv3-mobilenetv2")
    assert run_record.provenance(model_args) == {"base_model": None, "license": "apache-2.0"}
    model_args.pretrained_backbone = False  # random init: no one's weights
    assert run_record.provenance(model_args) == {"base_model": None, "license": None}


# ------------------------------------------------------------------------------------- cards true for every architecture
def _records(out: Path) -> tuple[dict, dict]:
    return json.loads((out / "run_config.json").read_text()), json.loads((out / "metrics.json").read_text())


def test_a_card_for_a_student_with_custom_code_loads_without_the_package(run):
    out, _, _ = run
    run_config, metrics = _records(out)
    card = str(model_card(run_config, metrics, repo_id=REPO_ID, model_type="timm_deeplabv3", custom_code=["deeplabv3.py"]))
    usage = card.split("## Usage", 1)[1]
    assert f'from_pretrained("{REPO_ID}", trust_remote_code=True)' in usage
    assert f'pipeline("image-segmentation", model="{REPO_ID}", trust_remote_code=True)' in usage
    assert "import acamkd_hf" not in usage.split("```python", 1)[1].split("```")[0].replace("`import acamkd_hf.models`", "")
    assert "plain `transformers` model" not in card and "custom code (`deeplabv3.py`" in card
    tags = card.split("tags:", 1)[1].split("\n---", 1)[0].split(":", 1)[0]  # the tag list
    assert "- timm_deeplabv3" in tags and "- segformer" not in tags  # the student's family, not the teacher's
    plain = str(model_card(run_config, metrics, repo_id=REPO_ID, model_type="segformer"))
    assert "trust_remote_code" not in plain and "plain `transformers` model" in plain


def test_a_detection_card_publishes_no_minus_one_and_links_that_work_on_the_hub(run):
    out, _, _ = run
    run_config, metrics = _records(out)
    run_config["model"]["task"] = "detection"
    scores = {"eval_map": 0.31, "eval_map_50": 0.52, "eval_map_75": 0.3, "eval_map_small": -1.0, "eval_map_medium": 0.2,
              "eval_map_large": -1.0, "eval_mar_100": 0.4}
    metrics = {key: {**row, **scores} for key, row in metrics.items()}
    card = str(model_card(run_config, metrics, repo_id=REPO_ID, model_type="rt_detr"))
    assert "-1.0" not in card and "value: -1" not in card
    model_index = card.split("---", 2)[1]
    assert "AP_S" not in model_index and "AP_M" in model_index
    assert "| n/a |" in card and "AP_S, AP_L is undefined on this split" in card
    from importlib.metadata import metadata

    declared = [u.split(",", 1)[1].strip() for u in metadata("acamkd-hf").get_all("Project-URL") if u.startswith("Homepage")]
    assert declared and f"[acamkd-hf]({declared[0]})" in card
    assert f"]({declared[0]}/blob/main/docs/results.md)" in card  # not a bare relative path, dead on the Hub


def test_uploaded_records_name_no_local_path_even_inside_a_command_line(run, tmp_path):
    out, _, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    record = json.loads((copy / "run_config.json").read_text())
    record["command"] = f"acamkd-distill --dataset {tmp_path}/data/city --output_dir={copy}"
    (copy / "run_config.json").write_text(json.dumps(record))
    uploads = upload_contents(copy, REPO_ID)
    for name, content in uploads.items():
        text = content.decode() if isinstance(content, bytes) else Path(content).read_bytes().decode(errors="ignore")
        assert str(tmp_path) not in text and "/root" not in text, name
    assert "--dataset <local>/city --output_dir=<local>/copy" in uploads["run_config.json"].decode()
