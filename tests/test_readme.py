"""The documentation's Python runs as it is written (issue 22).

The code blocks are read out of README.md and docs/python-api.md themselves (never a copy), executed, and what they
compute is checked: the README's "From Python" block builds the loss that `--method acamkd` builds (the same module,
the same numbers on the same features, against ``ACAMKDLoss.from_settings`` of the command line's settings), and
its paper form is ``--acamkd_variant paper``'s. Also: the README still holds the command line `.ci/run` reads out of
it, and the relative links of the README and of the pages it links resolve.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from acamkd_hf.arguments import parse_arguments
from acamkd_hf.losses import ACAMKDLoss
from acamkd_hf.settings import DistillationSettings

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PYTHON_API = REPO / "docs" / "python-api.md"
FROM_PYTHON_HEADING = "## From Python"


def section(markdown: str, heading: str) -> str:
    """The text under ``heading`` (a whole line) up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = markdown.splitlines()
    assert heading in lines, f"no {heading!r} heading"
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if re.match(rf"#{{1,{level}}} ", lines[i])), len(lines))
    return "\n".join(lines[start:end])


def python_blocks(markdown: str) -> list[str]:
    """The bodies of the fenced ```python blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```\s*$", markdown, flags=re.S | re.M)


def run_block(code: str, source: str) -> dict:
    namespace: dict = {"__name__": "__doc_snippet__"}
    exec(compile(code, source, "exec"), namespace)  # noqa: S102 - the project's own documentation
    return namespace


def cli_settings(*flags: str, tmp_path: Path) -> DistillationSettings:
    """The distillation settings `acamkd-distill FLAGS` would train with (before the model-dependent ones)."""
    _, _, args = parse_arguments([*flags, "--output_dir", str(tmp_path / "out")])
    return DistillationSettings.from_object(args)


def assert_same_loss(module: ACAMKDLoss, reference: ACAMKDLoss, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Same parameters and buffers (names and shapes), and, with the module's weights, the same terms."""
    reference.load_state_dict(module.state_dict())  # strict: the same modules, shapes and buffers
    got, expected = module(student, teacher), reference(student, teacher)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------------ the README
def test_readme_from_python_block_computes_the_method_acamkd_loss(tmp_path):
    blocks = python_blocks(section(README.read_text(), FROM_PYTHON_HEADING))
    assert blocks, f"README.md's {FROM_PYTHON_HEADING!r} section has no ```python block"
    namespace: dict = {}
    for index, block in enumerate(blocks):
        namespace.update(run_block(block, f"README.md:{FROM_PYTHON_HEADING}[{index}]"))

    loss_fn, paper_loss_fn, terms = namespace["loss_fn"], namespace["paper_loss_fn"], namespace["terms"]
    student, teacher = namespace["student_feature"], namespace["teacher_feature"]
    assert isinstance(loss_fn, ACAMKDLoss) and isinstance(paper_loss_fn, ACAMKDLoss)
    # what it computed: finite terms, and a gradient that reached the student
    assert {"loss", "channel", "spatial", "diversity"} <= terms.keys()
    assert all(math.isfinite(value.item()) for value in terms.values())
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0

    # what it says: loss_fn is what `--method acamkd` builds, paper_loss_fn what `--acamkd_variant paper` builds
    channels = (student.shape[1], teacher.shape[1])
    num_masks = loss_fn.masking.num_masks
    student, teacher = student.detach(), teacher.detach()
    for module, flags in ((loss_fn, ("--method", "acamkd")), (paper_loss_fn, ("--method", "acamkd", "--acamkd_variant", "paper"))):
        settings = cli_settings(*flags, tmp_path=tmp_path).resolved(["logits"], num_masks)
        assert_same_loss(module, ACAMKDLoss.from_settings(*channels, settings), student, teacher)
    assert loss_fn.mask_objective == "adversarial" and loss_fn.standardize_over == "image"  # the recommended variant
    assert paper_loss_fn.mask_objective == "imitation" and not paper_loss_fn.imitation_standardize


def test_readme_keeps_the_command_ci_runs():
    """`.ci/run` runs the first README line that starts with `pip install -e ".[test]"` (its grep, in Python)."""
    ci = (REPO / ".ci" / "run").read_text()
    assert """grep -m1 -E '^pip install -e "\\.\\[test\\]"' README.md""" in ci
    lines = [line for line in README.read_text().splitlines() if re.match(r'^pip install -e "\.\[test\]"', line)]
    assert lines and lines[0] == 'pip install -e ".[test]" && pytest'
    assert "pip install -e . && accelerate launch scripts/distill.py" in README.read_text().splitlines()


def relative_links(markdown: str) -> list[str]:
    """The targets of ``[text](target)`` links outside code, without anchors; web addresses left out."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return [target for target in re.findall(r"\]\(([^)\s#]*)(?:#[^)\s]*)?\)", prose) if target and ":" not in target]


def test_readme_and_docs_links_resolve():
    pages = [README] + [README.parent / target for target in relative_links(README.read_text()) if target.startswith("docs/")]
    assert len(pages) > 3
    for page in pages:
        assert page.is_file(), f"README.md links to {page.relative_to(REPO)}, which does not exist"
        for target in relative_links(page.read_text()):
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to {target}, which does not exist"


# ------------------------------------------------------------------------------------------ docs/python-api.md
def _python_api_blocks(trainer: bool) -> list[str]:
    blocks = [block for block in python_blocks(PYTHON_API.read_text()) if ("DistillationTrainer(" in block) == trainer]
    assert blocks, f"docs/python-api.md has no {'Trainer' if trainer else 'loss'} block"
    return blocks


def test_python_api_loss_blocks_run():
    for index, block in enumerate(_python_api_blocks(trainer=False)):
        namespace = run_block(block, f"docs/python-api.md[loss {index}]")
        terms = namespace["terms"]
        assert all(math.isfinite(value.item()) for value in terms.values())
        assert namespace["student_feature"].grad is not None


@pytest.mark.slow
def test_python_api_trainer_block_trains_and_saves_the_student(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the block writes data/synthetic and out/ where it runs
    for index, block in enumerate(_python_api_blocks(trainer=True)):
        namespace = run_block(block, f"docs/python-api.md[trainer {index}]")
        trainer = namespace["trainer"]
        assert trainer.state.global_step > 0 and math.isfinite(trainer.state.log_history[-1]["train_loss"])
        assert trainer.distillation_modules is not None  # it distilled (not the student alone)
        assert (tmp_path / namespace["args"].output_dir / "model.safetensors").is_file()


def test_the_families_table_is_the_one_the_code_generates():
    # The table is measured on each family's tiny preset; `python -m acamkd_hf.families.table --write README.md`
    # regenerates it after a family or a preset changes.
    from acamkd_hf.families.table import TABLE_END, TABLE_START, families_table

    readme = README.read_text()
    between = readme[readme.index(TABLE_START) + len(TABLE_START):readme.index(TABLE_END)]
    assert between.strip() == families_table(), "regenerate with: python -m acamkd_hf.families.table --write README.md"
