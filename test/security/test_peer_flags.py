"""``--mempool-peers`` on the launcher: entries are normalized to control endpoints and travel to
the SGLang processes in ``MEMSERVE_CONFIG``; ``--kv-return-peer`` counts as a registered peer;
a malformed entry is a typed error at start. The check itself runs on real instances in
``test_secured_cluster.py``."""

from __future__ import annotations

import json

import pytest

from sglang_memserve.config import MemServeConfig, control_endpoint
from sglang_memserve.launch_server import build


def test_endpoints_are_normalized() -> None:
    assert control_endpoint("127.0.0.1:5001") == "tcp://127.0.0.1:5001"
    assert control_endpoint(" tcp://h.example:0042 ") == "tcp://h.example:42"
    for bad in ("127.0.0.1", ":5", "h:0", "h:70000", "h:x", "tcp://", 5):
        with pytest.raises(ValueError, match="peer"):
            control_endpoint(bad)  # type: ignore[arg-type]


def test_launcher_flag_reaches_the_instance_config() -> None:
    config, argv, _ = build(["--model-path", "M", "--role", "decode", "--kv-return",
                             "--mempool-peers", "127.0.0.1:7001, tcp://10.0.0.2:7002",
                             "--kv-return-peer", "tcp://127.0.0.1:7003"], cpu=True)
    assert config.peers == ("tcp://127.0.0.1:7001", "tcp://10.0.0.2:7002",
                            "tcp://127.0.0.1:7003")
    assert "--mempool-peers" not in argv  # MemServe's flag, not SGLang's
    assert MemServeConfig(**json.loads(config.to_env())).peers == config.peers


def test_no_flag_means_any_destination_and_empty_means_none() -> None:
    assert build(["--model-path", "M"], cpu=True)[0].peers is None
    assert build(["--model-path", "M", "--mempool-peers", ""], cpu=True)[0].peers == ()


def test_bad_entry_fails_at_start() -> None:
    with pytest.raises(ValueError, match="bad peer 'nope'"):
        build(["--model-path", "M", "--mempool-peers", "127.0.0.1:7001,nope"], cpu=True)
