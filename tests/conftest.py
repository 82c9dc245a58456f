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
    """The program of ``acamkd-distill`` / ``scripts/distill.py``: :mod:`acamkd_hf.cli` (``main``, ``run``,
    ``parse_arguments``, ``load_model``, ...)."""
    import acamkd_hf.cli

    return acamkd_hf.cli
