"""launch_server's argument handling: MemServe flags, SGLang passthrough, CPU and role defaults."""

from __future__ import annotations

import pytest

from sglang_memserve.config import MemServeConfig
from sglang_memserve.launch_server import build


def flag_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_cpu_defaults_fill_only_missing_flags() -> None:
    _, argv, env = build(["--model-path", "M", "--dtype", "bfloat16", "--port", "9"], cpu=True)
    assert flag_value(argv, "--dtype") == "bfloat16"  # the user's value wins
    assert argv.count("--dtype") == 1
    assert flag_value(argv, "--device") == "cpu"
    assert flag_value(argv, "--attention-backend") == "torch_native"
    assert "--sleep-on-idle" in argv and "--disable-cuda-graph" in argv
    assert env["SGLANG_USE_CPU_ENGINE"] == "1"


def test_sleep_on_idle_can_be_turned_off() -> None:
    _, argv, _ = build(["--model-path", "M", "--no-sleep-on-idle"], cpu=True)
    assert "--sleep-on-idle" not in argv and "--no-sleep-on-idle" not in argv


def test_kv_return_turns_on_decode_radix_cache_and_prefill_control_port() -> None:
    config, argv, _ = build(["--model-path", "M", "--role", "decode", "--kv-return"], cpu=True)
    assert config.kv_return and "--disaggregation-decode-enable-radix-cache" in argv
    config, _, _ = build(["--model-path", "M", "--role", "prefill",
                          "--disaggregation-bootstrap-port", "7000"], cpu=True)
    assert config.control_port == 7001 and not config.kv_return


def test_no_cpu_defaults_on_gpu_hosts() -> None:
    _, argv, env = build(["--model-path", "M"], cpu=False)
    assert "--device" not in argv and "--sleep-on-idle" not in argv
    assert "SGLANG_USE_CPU_ENGINE" not in env


@pytest.mark.parametrize("mode, flags", [
    ("memserve", ["--radix-cache-backend", "memserve"]),
    ("off", ["--disable-radix-cache"]),
])
def test_cache_modes(mode: str, flags: list[str]) -> None:
    config, argv, _ = build(["--model-path", "M", "--memserve-cache", mode], cpu=True)
    assert config.cache == mode
    assert all(f in argv for f in flags)


def test_stock_cache_leaves_sglang_default() -> None:
    _, argv, _ = build(["--model-path", "M", "--memserve-cache", "stock"], cpu=True)
    assert "--radix-cache-backend" not in argv and "--disable-radix-cache" not in argv


def test_roles_set_disaggregation_and_cpu_workarounds() -> None:
    config, argv, env = build(["--model-path", "M", "--role", "prefill", "--host", "127.0.0.2"],
                              cpu=True)
    assert config.role == "prefill" and config.host == "127.0.0.2"
    assert flag_value(argv, "--disaggregation-mode") == "prefill"
    assert "--disable-overlap-schedule" in argv
    assert env["MC_TCP_BIND_ADDRESS"] == "127.0.0.2" and env["SGLANG_HOST_IP"] == "127.0.0.2"
    _, argv, _ = build(["--model-path", "M", "--role", "decode"], cpu=True)
    assert flag_value(argv, "--disaggregation-decode-retraction-backup") == "cpu_tensor"


def test_embedded_model_when_no_model_path(tiny_model) -> None:
    _, argv, _ = build([], cpu=True)
    assert flag_value(argv, "--model-path") == str(tiny_model)


def test_config_round_trips_and_rejects_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    config = MemServeConfig(role="decode", host_pool_ratio=2.0, instance_id="d0")
    monkeypatch.setenv("MEMSERVE_CONFIG", config.to_env())
    assert MemServeConfig.from_env() == config
    with pytest.raises(ValueError, match="role"):
        MemServeConfig(role="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="host_pool_ratio"):
        MemServeConfig(host_pool_ratio=-1)
