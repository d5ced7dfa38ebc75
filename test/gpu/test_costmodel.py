"""Cost-table loader and interpolation (pure Python: runs everywhere)."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from sglang_memserve.gpu.costmodel import (
    SCHEMA_VERSION,
    CostTable,
    available_tables,
    device_table_name,
    load_table,
)


def _affine_table() -> CostTable:
    """exec(x, y) = 1e-3 + 1e-6 * (x - y) on a grid: interpolation must be exact inside."""
    pts = [(x, int(f * x), 1e-3 + 1e-6 * (x - int(f * x)))
           for x in (256, 1024, 4096) for f in (0.0, 0.5, 0.9)]
    return CostTable(device="test", model_shape={"name": "toy"}, exec_points=pts,
                     swap_out_per_page_s=2e-5, swap_in_per_page_s=4e-5,
                     transfer_per_page_s=1e-4, page_size=16, page_nbytes=1 << 20,
                     decode_points=[(1, 1024, 1e-3), (1, 4096, 2e-3), (8, 1024, 3e-3),
                                    (8, 4096, 5e-3)])


def test_exact_at_grid_points() -> None:
    t = _affine_table()
    for x, y, s in t.exec_points:
        assert t.exec_time(x, y) == pytest.approx(s, rel=1e-9)


def test_interpolates_affine_model_exactly() -> None:
    t = _affine_table()
    for x, y in [(2048, 0), (2048, 1024), (512, 100), (3000, 2700), (4096, 1000)]:
        assert t.exec_time(x, y) == pytest.approx(1e-3 + 1e-6 * (x - y), rel=1e-6)


def test_monotone_in_cached_prefix() -> None:
    t = _affine_table()
    times = [t.exec_time(4096, y) for y in range(0, 4097, 256)]
    assert all(a >= b for a, b in zip(times, times[1:], strict=False))
    assert t.prefix_saving(4096, 2048) > 0


def test_edges() -> None:
    t = _affine_table()
    # Full hit computes one token; never negative; beyond the last measured hit ratio clamps.
    assert t.exec_time(4096, 4096) > 0
    assert t.exec_time(4096, 4000) > 0
    # Below the shortest prompt: no more than the shortest prompt's time, not below proportional.
    small = t.exec_time(16, 0)
    assert small <= t.exec_time(256, 0)
    assert small >= t.exec_time(256, 0) * 16 / 256
    # Above the longest prompt: linear extrapolation keeps growing.
    assert t.exec_time(16384, 0) > t.exec_time(4096, 0)
    with pytest.raises(ValueError):
        t.exec_time(0, 0)
    with pytest.raises(ValueError):
        t.exec_time(10, 11)


def test_swap_transfer_decode() -> None:
    t = _affine_table()
    assert t.swap_time(10, "out") == pytest.approx(2e-4)
    assert t.swap_time(10, "in") == pytest.approx(4e-4)
    assert t.swap_per_page_s == pytest.approx(3e-5)
    assert t.transfer_time(3) == pytest.approx(3e-4)
    assert t.pages_for(17) == 2
    assert t.decode_time(1, 1024) == pytest.approx(1e-3)
    assert t.decode_time(4, 2048) == pytest.approx(
        ((1e-3 + (2e-3 - 1e-3) / 3) * 4 + (3e-3 + (5e-3 - 3e-3) / 3) * 3) / 7)
    with pytest.raises(ValueError):
        t.swap_time(1, "sideways")


def test_json_round_trip_and_version() -> None:
    t = _affine_table()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.json")
        t.save(path)
        back = load_table(path)
        assert back.to_json() == t.to_json()
        obj = json.load(open(path, encoding="utf-8"))
        assert obj["version"] == SCHEMA_VERSION
        obj["version"] = SCHEMA_VERSION + 1
        with pytest.raises(ValueError, match="version"):
            CostTable.from_json(obj)
        del obj["exec"]
        obj["version"] = SCHEMA_VERSION
        with pytest.raises(ValueError, match="lacks"):
            CostTable.from_json(obj)


def test_bad_points_rejected() -> None:
    with pytest.raises(ValueError):
        CostTable(device="x", model_shape={}, exec_points=[(10, 10, 1.0)],
                  swap_out_per_page_s=0, swap_in_per_page_s=0, transfer_per_page_s=0,
                  page_size=16, page_nbytes=1)
    with pytest.raises(ValueError):
        CostTable(device="x", model_shape={}, exec_points=[],
                  swap_out_per_page_s=0, swap_in_per_page_s=0, transfer_per_page_s=0,
                  page_size=16, page_nbytes=1)


def test_shipped_tables_load() -> None:
    names = available_tables()
    assert "cpu-bench" in names
    for name in names:
        t = load_table(name)
        assert t.version == SCHEMA_VERSION
        xs = sorted({x for x, _, _ in t.exec_points})
        # Longer prompts cost more, cached prefixes save time.
        assert t.exec_time(xs[-1], 0) > t.exec_time(xs[0], 0)
        assert t.exec_time(xs[-1], xs[-1] // 2) < t.exec_time(xs[-1], 0)
        assert t.swap_per_page_s > 0 and t.transfer_per_page_s > 0
    with pytest.raises(FileNotFoundError):
        load_table("no-such-table")


def test_device_table_name() -> None:
    assert device_table_name("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert device_table_name("NVIDIA H200") == "nvidia-h200"


@pytest.mark.parametrize("name", ["cpu-bench", "nvidia-h100-80gb-hbm3"])
def test_shipped_tables_never_charge_for_a_hit(name: str) -> None:
    """Below the shortest measured prompt the rows are extrapolated with different slopes; a
    cached prefix must still never look dearer than computing it (the router relies on it)."""
    t = load_table(name)
    for x in (2, 5, 9, 18, 31, 63, 100, 700, 5000):
        miss = t.exec_time(x, 0)
        for y in range(1, x, max(1, x // 13)):
            assert t.exec_time(x, y) <= miss, (x, y)


@pytest.mark.parametrize("name", ["cpu-bench", "nvidia-h100-80gb-hbm3"])
def test_shipped_tables_monotone_in_the_hit_for_short_prompts(name: str) -> None:
    """A longer cached prefix is never dearer than a shorter one, below the measured grid too."""
    t = load_table(name)
    for x in (3, 10, 22, 40, 63):
        times = [t.exec_time(x, y) for y in range(x)]
        assert all(a >= b for a, b in zip(times, times[1:], strict=False)), (x, times)
