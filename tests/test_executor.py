"""A whole build and forget through the local worker pool gives the registry the in-process
executor gives, bit for bit. What every backend promises job by job (results, a killed
worker, a timeout, a failing job, close) is ``test_executor_contract.py``; Ray's build on a
worker node is ``test_ray_multinode.py``."""

from __future__ import annotations

import pytest
from model_views import build_and_forget


@pytest.fixture(scope="module")
def inline_view(tmp_path_factory, digits_data, lite0_32):
    from conftest import small_raw

    from eraserd.config import config_from_dict

    cfg = config_from_dict(
        small_raw(tmp_path_factory.mktemp("inline") / "state", digits_data / "manifest.csv")
    )
    return build_and_forget(cfg, lite0_32)


@pytest.mark.slow
def test_two_local_workers_build_and_forget_what_inline_does(make_config, inline_view):
    import torch

    cfg = make_config("pool2", executor={"backend": "local", "devices": ["cpu", "cpu"]})
    assert build_and_forget(cfg) == inline_view
    assert not torch.cuda.is_initialized(), "the parent must never initialise CUDA"
