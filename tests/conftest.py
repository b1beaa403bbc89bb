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


@pytest.fixture(autouse=True, scope="session")
def runtime_cache(tmp_path_factory):
    """Exported encoders (pipeline/encoders/runtimes.py) go to a folder of this test session, not
    the user's ~/.cache; tests with the same encoder weights share one export."""
    import os
    folder = tmp_path_factory.mktemp("runtime-cache")
    old = os.environ.get("CAPTION_PIPELINE_CACHE")
    os.environ["CAPTION_PIPELINE_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("CAPTION_PIPELINE_CACHE", None)
    else:
        os.environ["CAPTION_PIPELINE_CACHE"] = old


def pytest_collection_modifyitems(config, items):
    """The Ray tests run last. Ray leaves its threads and child processes in this process, and
    forking the process afterwards (a pool of rendering processes, in an earlier layout of the
    tests) crashed the whole test session in CI with a segfault, twice. Any test that forks
    (DataLoader workers, process pools) must therefore run before them. The sort is stable, so
    the order of the other tests is unchanged."""
    items.sort(key=lambda item: item.get_closest_marker("ray") is not None)
