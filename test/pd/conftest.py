"""PD fixtures: a colocated reference without a prefix cache and two 1P1D clusters (real
processes, Mooncake over loopback TCP, sglang-router), each started once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from sglang_memserve.cluster import ServerProcess
from sglang_memserve.pd import PdCluster, PdOptions


@pytest.fixture(scope="session")
def tokenizer(tiny_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_model))


@pytest.fixture(scope="session")
def reference(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[ServerProcess]:
    """A colocated instance with no prefix cache: the outputs PD must reproduce."""
    server = ServerProcess(["--model-path", str(tiny_model), "--memserve-cache", "off"],
                           tmp_path_factory.mktemp("pd-ref"), name="reference")
    with server:
        yield server


def _cluster(stage: str, model: Path, logs: Path) -> Iterator[PdCluster]:
    with PdCluster(PdOptions(stage=stage, common_args=("--model-path", str(model))), logs) as pd:
        yield pd


@pytest.fixture(scope="session")
def pd_basic(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PdCluster]:
    """PD-Basic: no prefix cache on prefill or decode."""
    yield from _cluster("basic", tiny_model, tmp_path_factory.mktemp("pd-basic"))


@pytest.fixture(scope="session")
def pd_cached(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PdCluster]:
    """PD-Caching-1+2: prefill's radix cache, and decode's (delta-only transfers)."""
    yield from _cluster("caching2", tiny_model, tmp_path_factory.mktemp("pd-cached"))
