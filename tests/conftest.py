"""Fixtures shared by several test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors on 2 shared cores: one torch thread is far faster than two contending
    (restored after the module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
