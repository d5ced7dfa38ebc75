"""The patch census of a real server, and a renamed or changed SGLang internal failing loudly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from sglang_memserve import compat
from sglang_memserve.cluster import ServerProcess
from sglang_memserve.compat import runtime, surface

# What each kind of entry must report when it took effect (replaced/read internals are checked
# at start-up; MemServe's cache uses them when SGLang builds it).
_DONE = {"import": "applied", "runtime": "applied", "hook": "applied", "replaced": "checked",
         "reads": "checked"}


@pytest.mark.skipif(not compat.needed(), reason="the CPU patches apply on CPU hosts only")
def test_every_patch_applied_in_the_scheduler_of_a_real_server(
        memserve_server: ServerProcess) -> None:
    info = requests.get(f"{memserve_server.url}/server_info", timeout=30).json()
    state = info["internal_states"][0]["memserve"]
    assert state["tree_cache_class"] == "MemServeRadixCache"  # the replaced recorder's cache
    census = {e["name"]: e for e in state["compat_census"]}
    assert set(census) == ({"torchvision", "sgl_kernel"} | set(runtime.PATCHES)
                           | {u.name for u in surface.USES})
    not_done = {n: (e["status"], e["reason"]) for n, e in census.items()
                if e["status"] != _DONE[e["kind"]]}
    assert not not_done
    assert all(e["targets"] and e["why"] for e in census.values())
    assert set(state["compat_patches"]) == {"torchvision", "sgl_kernel"} | set(runtime.PATCHES)


@pytest.mark.skipif(not compat.needed(), reason="the CPU patches apply on CPU hosts only")
def test_census_after_sglangs_plugin_loader_in_a_fresh_process() -> None:
    code = ("import json\n"
            "from sglang.srt.plugins import load_plugins\n"
            "from sglang_memserve import compat\n"
            "print('before', json.dumps(compat.census()))\n"
            "load_plugins()\n"
            "import sgl_kernel, torchvision\n"  # what SGLang's scheduler imports
            "print('after', json.dumps(compat.census()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines()
                 if line.startswith(("before ", "after ")))
    before, after = (json.loads(lines[k]) for k in ("before", "after"))
    assert {e["status"] for e in before if e["kind"] == "runtime"} == {"pending"}
    assert {e["name"]: e["status"] for e in after if e["status"] != _DONE[e["kind"]]} == {}


def _load_plugins_after(breakage: str) -> subprocess.CompletedProcess[str]:
    """Run SGLang's own plugin loader (as each SGLang process does) after ``breakage``."""
    code = (f"{breakage}\n"
            "from sglang.srt.plugins import load_plugins\n"
            "load_plugins()\n"
            "print('plugins loaded')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(not compat.needed(), reason="the CPU patches apply on CPU hosts only")
def test_a_renamed_patch_target_stops_the_process_naming_versions_and_patch() -> None:
    out = _load_plugins_after(
        "import sglang\n"
        "sglang.__version__ = '0.5.99'\n"  # the message names the version actually installed
        "from sglang_memserve.compat import imports\n"
        "imports.KERNEL_NAMES_VERSION = '0.5.99'\n"  # its sgl_kernel names re-derived
        "from sglang.srt.disaggregation.mooncake import conn\n"
        "conn.MooncakeKVSender.supports_host_tensor_index = "
        "conn.MooncakeKVSender.supports_host_tensor_indices\n"
        "del conn.MooncakeKVSender.supports_host_tensor_indices\n")
    assert out.returncode != 0 and "plugins loaded" not in out.stdout
    assert "patch 'mooncake-host-indices' cannot apply" in out.stderr
    assert "sglang.srt.disaggregation.mooncake.conn.MooncakeKVSender" in out.stderr
    assert "supports_host_tensor_indices" in out.stderr
    assert f"Installed SGLang 0.5.99, MemServe is pinned to SGLang {compat.PINNED_SGLANG}" \
        in out.stderr


@pytest.mark.skipif(not compat.needed(), reason="the stand-in applies on CPU hosts only")
def test_another_sglang_version_stops_the_process_until_the_kernel_names_are_rederived() -> None:
    out = _load_plugins_after("import sglang\nsglang.__version__ = '0.6.0'\n")
    assert out.returncode != 0 and "plugins loaded" not in out.stdout
    assert "patch 'sgl_kernel' cannot apply" in out.stderr
    assert "lists the sgl_kernel names of SGLang 0.5.23, not 0.6.0's" in out.stderr
    assert "Installed SGLang 0.6.0" in out.stderr


def test_a_changed_hook_signature_stops_the_process() -> None:
    out = _load_plugins_after(
        "from sglang.srt.managers.tokenizer_manager import TokenizerManager\n"
        "def _validate_one_request(self, request, token_ids):\n    pass\n"
        "TokenizerManager._validate_one_request = _validate_one_request\n")
    assert out.returncode != 0 and "plugins loaded" not in out.stdout
    assert "patch 'hook:validate-prompt-ids' cannot apply" in out.stderr
    assert "expected leading parameters ['self', 'obj', 'input_ids']" in out.stderr
    assert f"Installed SGLang {compat.installed_sglang()}" in out.stderr


def test_the_launcher_stops_before_starting_sglang_when_a_target_is_gone() -> None:
    code = ("from sglang.srt.mem_cache import events\n"
            "del events.KVCacheEventRecorder.record_all_cleared\n"
            "from sglang_memserve.launch_server import main\n"
            "main(['--embedded-model', 'tiny', '--port', '1'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0
    assert "patch 'replaced:kv-event-recorder' cannot apply" in out.stderr
    assert "KVCacheEventRecorder.record_all_cleared does not exist" in out.stderr
