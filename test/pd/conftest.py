"""PD fixtures: two 1P1D clusters (real processes, Mooncake over loopback TCP, memserve-router),
each started once for this package and stopped after it (the uncached ``reference`` is in
test/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from sglang_memserve.pd import PdCluster, PdOptions


@pytest.fixture(scope="session")
def tokenizer(tiny_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_model))


def _cluster(stage: str, model: Path, logs: Path) -> Iterator[PdCluster]:
    with PdCluster(PdOptions(stage=stage, common_args=("--model-path", str(model))), logs) as pd:
        yield pd


@pytest.fixture(scope="package")
def pd_basic(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PdCluster]:
    """PD-Basic: no prefix cache on prefill or decode."""
    yield from _cluster("basic", tiny_model, tmp_path_factory.mktemp("pd-basic"))


@pytest.fixture(scope="package")
def pd_cached(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PdCluster]:
    """PD-Caching-1+2: prefill's radix cache, and decode's (delta-only transfers)."""
    yield from _cluster("caching2", tiny_model, tmp_path_factory.mktemp("pd-cached"))
