"""Router fixtures: real MemServe instances (tiny model) behind a real memserve-router process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from sglang_memserve.cluster import ServerProcess


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_model))


@pytest.fixture(scope="session")
def uncached(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[ServerProcess]:
    """A colocated instance with no prefix cache: the outputs every routed path must match."""
    with ServerProcess(["--model-path", str(tiny_model), "--memserve-cache", "off"],
                       tmp_path_factory.mktemp("router-ref"), name="uncached") as server:
        yield server
