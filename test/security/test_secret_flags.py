"""``--mempool-secret-file`` on the launcher and the router: the file is checked at start (a
typed error or a CLI error naming it), only its path travels (never the secret on a command
line), and the router's config carries the loaded secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memserve_router.cli import parse_args
from sglang_memserve.config import MemServeConfig
from sglang_memserve.launch_server import build
from sglang_memserve.mempool.auth import SECRET_ENV, SECRET_FILE_ENV, AuthError

SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv(SECRET_FILE_ENV, raising=False)


def test_launcher_takes_the_path_not_the_secret(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_text(SECRET)
    rel = os.path.relpath(f)
    config, argv, env = build(["--model-path", "M", "--mempool-secret-file", rel], cpu=True)
    assert config.secret_file == str(f.resolve())
    assert "--mempool-secret-file" not in argv and SECRET not in " ".join(argv)
    assert SECRET not in config.to_env() and SECRET not in str(env)
    assert MemServeConfig().secret_file is None
    with pytest.raises(AuthError, match="cannot read"):
        build(["--model-path", "M", "--mempool-secret-file", str(tmp_path / "nope")], cpu=True)


def test_router_flag_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s"
    f.write_text(SECRET + "\n")
    urls = ["--worker-urls", "http://127.0.0.1:1"]
    assert parse_args(urls)[0].control_auth is None
    config = parse_args([*urls, "--mempool-secret-file", str(f)])[0]
    assert config.control_auth is not None and config.control_auth.secret == SECRET.encode()
    assert SECRET not in repr(config)
    monkeypatch.setenv(SECRET_ENV, "from-the-environment-0123456789")
    assert parse_args(urls)[0].control_auth.secret == b"from-the-environment-0123456789"
    with pytest.raises(SystemExit):
        parse_args([*urls, "--mempool-secret-file", str(tmp_path / "nope")])
    assert "cannot read the control-channel secret file" in capsys.readouterr().err
