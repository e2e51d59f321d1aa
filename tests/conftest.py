"""The tests use tiny tensors; torch's intra-op thread pool only adds
synchronisation cost there (and spins badly when the CPUs are shared), so these tests run
single-threaded. The previous setting is restored after each test."""

import os

import pytest
import torch

# Tests see the real exception of an internal error, not the CLI's report of it
# (archc/cli.py); subprocesses started by tests inherit this.
os.environ.setdefault("ARCHC_BACKTRACE", "1")


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
