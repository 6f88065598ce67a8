"""One torch thread per test process: these models are tiny, and on a shared 2-core machine two OpenMP threads
that spin-wait for each other can make a step 10-100x slower than one thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
