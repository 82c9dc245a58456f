"""What the user got wrong ends in one line, ``acamkd-distill: error: ...``, exit status 2, no traceback; an
unexpected error keeps its traceback."""

from __future__ import annotations

import pytest

from acamkd_hf import cli
from acamkd_hf.errors import InputError, input_checks, is_input_error


def _tiny_flags(tmp_path):
    return ["--output_dir", str(tmp_path / "student"), "--synthetic_dir", str(tmp_path / "data"), "--synthetic_num_train",
            "8", "--synthetic_num_val", "4", "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
            "--disable_tqdm", "true", "--compare_student_alone", "false"]


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("acamkd-distill: error: ")
    return last


def test_each_user_error_is_one_line(tmp_path, capsys):
    flags = _tiny_flags(tmp_path)
    assert "'./no-such-teacher' is not a preset name and no such folder exists" in _one_line_error(
        capsys, [*flags, "--teacher", "./no-such-teacher"])
    assert "Unknown distillation point 'stage9'" in _one_line_error(capsys, [*flags, "--distillation_points", "stage9"])
    (tmp_path / "a_file").write_text("")
    assert "is a file, not a folder" in _one_line_error(capsys, [*flags, "--output_dir", str(tmp_path / "a_file")])
    (tmp_path / "empty").mkdir()
    for folder in ("empty", "missing"):
        message = _one_line_error(capsys, [*flags, "--dataset", str(tmp_path / folder)])
        assert f"no data found at --dataset '{tmp_path / folder}'" in message and "a COCO folder" in message
    assert "--mask_uniform_mix must be in [0, 1]" in _one_line_error(capsys, [*flags, "--mask_uniform_mix", "2"])
    assert not (tmp_path / "student_teacher").exists()  # nothing trained


def test_only_the_packages_own_checks_are_user_errors():
    with pytest.raises(ValueError) as caught, input_checks():
        int("not a number")  # a library's (here Python's) error: keeps its traceback
    assert not is_input_error(caught.value)
    with pytest.raises(ValueError) as caught, input_checks():
        from acamkd_hf.settings import DistillationSettings

        DistillationSettings(num_masks=0)
    assert is_input_error(caught.value)
    assert is_input_error(InputError("x"))


def test_an_unreachable_hub_is_found_in_seconds_and_a_missing_model_is_one_line(tmp_path, capsys, monkeypatch):
    """No HF_HUB_OFFLINE and no connection: one probe of the endpoint, then offline mode (no minute of retries);
    a Hub id that is not cached is one line saying why."""
    import socket
    import time

    import datasets.config
    import huggingface_hub.constants

    from acamkd_hf import connectivity

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(connectivity, "SWITCHED", [])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    probes = []

    def refused(address, timeout=None):
        probes.append((address, timeout))
        raise ConnectionRefusedError("no network here")

    monkeypatch.setattr(socket, "create_connection", refused)
    start = time.monotonic()
    message = _one_line_error(capsys, [*_tiny_flags(tmp_path), "--student", "some-org/some-model"])
    assert time.monotonic() - start < 60
    assert len(probes) == 1 and probes[0][1] <= connectivity.PROBE_TIMEOUT_S
    assert "the student 'some-org/some-model' is a Hub id, the Hub cannot be reached (ConnectionRefusedError" in message
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True  # switched (monkeypatch restores it after the test)
