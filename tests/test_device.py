"""matcher.device.resolve_device: the one device check of every command."""

from __future__ import annotations

import pytest
import torch

from matcher.device import resolve_device


def test_auto_and_none_pick_cuda_only_where_visible():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == want
    assert resolve_device(None).type == want
    assert resolve_device("auto").type == want


def test_cpu_is_cpu_whatever_the_rank():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cpu", local_rank=3) == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:x", "", "tpu:0"])
def test_unknown_names_list_the_allowed_ones(name):
    with pytest.raises(ValueError, match=r"allowed 'auto', 'cpu', 'cuda', 'cuda:N'"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_says_so_and_names_the_way_out(name):
    with pytest.raises(ValueError, match=rf"device '{name}': no CUDA device is available here "
                                         r"\(torch .*\); use 'cpu'"):
        resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_an_index_beyond_the_visible_devices_is_an_error():
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"only {n} CUDA devices are visible"):
        resolve_device(f"cuda:{n}")


def test_the_commands_share_it():
    # The five places that each had their own check now call this one.
    import inspect

    import matcher.match
    import training.campaign.runner
    import training.evaluate
    import training.metric_job
    import training.trainer
    for module in (matcher.match, training.campaign.runner, training.evaluate, training.metric_job,
                   training.trainer):
        source = inspect.getsource(module)
        assert "resolve_device(" in source, module.__name__
        assert "cuda.is_available()" not in source, module.__name__
