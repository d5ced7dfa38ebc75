"""compat.Target: what a patch relies on is checked, and each kind of change is caught."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sglang_memserve.compat import PINNED_SGLANG, CompatError, Target, surface
from sglang_memserve.compat.targets import Unavailable, installed_sglang

ROOT = Path(__file__).resolve().parents[1]

_MODULE = '''
import json

class Base:
    def __init__(self, page_size, *, pin_memory=False):
        self.page_size = page_size

class Pool(Base):
    limit = 3

    def __init__(self, page_size, *, pin_memory=False):
        super().__init__(page_size, pin_memory=pin_memory)
        self.kv_buffer = []

    def alloc(self, n, device=None):
        return getattr(self, "supports_fast_path", False) or json.dumps(n)
'''


@pytest.fixture()
def fake_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "memserve_fake_target.py").write_text(_MODULE)
    (tmp_path / "memserve_fake_needs_dep.py").write_text("import memserve_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "memserve_fake_target"
    for name in ("memserve_fake_target", "memserve_fake_needs_dep"):
        sys.modules.pop(name, None)


def test_a_target_that_holds_passes_every_kind_of_check(fake_module: str) -> None:
    obj = Target(fake_module, "Pool.alloc", params=("self", "n"), keywords=("device",),
                 reads="supports_fast_path").check("p")
    assert obj.__name__ == "alloc"
    Target(fake_module, "Pool", attrs=("limit", "alloc"),
           instance_attrs=("kv_buffer", "page_size")).check("p")  # page_size: set by the base
    Target(fake_module, "", reads="json").check("p")


@pytest.mark.parametrize("target, problem", [
    (Target("memserve_fake_target", "Pool.free"), "does not exist (no 'free')"),
    (Target("memserve_fake_target", "Pool.alloc", params=("self", "count")),
     "expected leading parameters ['self', 'count']"),
    (Target("memserve_fake_target", "Pool.__init__", keywords=("pin_memory", "numa")),
     "without ['numa']"),
    (Target("memserve_fake_target", "Pool", attrs=("limit", "capacity")),
     "has no attribute(s) ['capacity']"),
    (Target("memserve_fake_target", "Pool", instance_attrs=("kv_buffer", "slot_used")),
     "no longer sets self.slot_used"),
    (Target("memserve_fake_target", "Pool.alloc", reads="transfer_kv_direct"),
     "no longer reads 'transfer_kv_direct'"),
    (Target("memserve_fake_target.missing", "X"), "cannot be imported"),
])
def test_a_changed_target_fails_naming_patch_problem_and_versions(
        fake_module: str, target: Target, problem: str) -> None:
    with pytest.raises(CompatError) as err:
        target.check("my-patch")
    message = str(err.value)
    assert problem in message
    assert "patch 'my-patch'" in message and target.name in message
    assert f"Installed SGLang {installed_sglang()}" in message
    assert f"pinned to SGLang {PINNED_SGLANG}" in message


def test_a_module_needing_an_absent_third_party_package_is_unavailable_not_an_error(
        fake_module: str) -> None:
    with pytest.raises(Unavailable, match="memserve_absent_dependency"):
        Target("memserve_fake_needs_dep", "anything").check("p")


def test_the_pinned_version_is_the_one_install_sh_installs() -> None:
    pins = set(re.findall(r"sglang==([0-9][0-9a-z.]*)",
                          (ROOT / "scripts" / "install.sh").read_text()))
    assert pins == {PINNED_SGLANG}
    assert installed_sglang() == PINNED_SGLANG  # this venv is the pinned install


def test_every_plugin_hook_is_declared_with_its_targets() -> None:
    from sglang_memserve import plugin

    declared = {u.hook_target for u in surface.HOOKS}
    assert declared == set(plugin._HOOKS)
    for use in surface.HOOKS:  # the hooked method itself is checked, not only its class
        assert use.hook_target in {t.name for t in use.targets}


def test_every_declared_target_holds_on_the_installed_sglang() -> None:
    from sglang_memserve import compat
    from sglang_memserve.compat import runtime

    compat.apply_import_patches()
    for use in surface.USES:
        for target in use.targets:
            target.check(use.name)
    for p in runtime.PATCHES.values():
        assert p.targets, f"{p.name} declares no target"
        for target in p.targets:
            target.check(p.name)
