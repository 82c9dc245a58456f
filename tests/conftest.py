"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    # The test models are tiny: a second OpenMP thread only adds synchronisation, which costs whole scheduler time
    # slices when the 2 cores are shared (forward+backward of the tiny MobileNetV2 went from 0.1 s to 0.8-7 s).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def distill_script():
    """scripts/distill.py imported as a module (it is a script, not part of the package)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "distill.py"
    spec = importlib.util.spec_from_file_location("distill_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module
