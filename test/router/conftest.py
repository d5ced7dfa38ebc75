"""Router fixtures: real MemServe instances (tiny model) behind a real memserve-router process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_model))
