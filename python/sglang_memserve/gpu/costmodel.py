"""MemServe's cost model, measured: a versioned table the router's cost policy and a simulator read.

The paper's global scheduler estimates ``exec(x, y)``: the time to prefill a prompt of ``x``
tokens whose first ``y`` tokens are already cached (a prefix hit), plus the per-page costs of
moving KV: swap between HBM and DRAM and transfer between instances. ``benchmarks/gpu`` measures
these on a GPU (a Llama-3-8B layer shape) and on CPU (the bench-size model) and writes JSON
tables shipped in ``sglang_memserve/gpu/tables/``. Pure Python: no torch, no CUDA.

Table format (``version`` 1)::

    {
      "version": 1,
      "device": "NVIDIA H100 80GB HBM3",          # where it was measured
      "model_shape": {"name": "llama-3-8b", "num_layers": 32, ...},
      "page_size": 16, "page_nbytes": 2097152,   # tokens and bytes of one KV page (all layers)
      "exec": [[x, y, seconds], ...],            # prefill of x tokens, first y cached
      "decode": [[batch, context, seconds], ...], # one decode step (optional)
      "swap_out_per_page_s": ..., "swap_in_per_page_s": ..., "swap_per_page_s": ...,
      "transfer_per_page_s": ..., "transfer_basis": "...",
      "meta": {...}                              # how it was measured, bandwidths, dates
    }

``exec`` points lie on a grid of prompt lengths ``x``, each with several cached prefixes ``y``.
:meth:`CostTable.exec_time` interpolates linearly in the cached fraction ``y / x`` within a
prompt length, then linearly in ``x`` between prompt lengths (see its docstring for the edges).
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

SCHEMA_VERSION = 1
_TABLES_PACKAGE = "sglang_memserve.gpu"
_TABLES_DIR = "tables"


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear interpolation through sorted ``xs``, extrapolating the end segments.

    Args:
        xs: strictly increasing abscissae (at least one).
        ys: values at ``xs``.
        x: query point.

    Returns:
        The interpolated (or linearly extrapolated) value; the single value if ``len(xs) == 1``.
    """
    if len(xs) == 1:
        return ys[0]
    i = bisect.bisect_left(xs, x)
    i = min(max(i, 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass
class CostTable:
    """A measured cost table (see the module docstring for the JSON form).

    Attributes:
        device: device the table was measured on.
        model_shape: the model's shape (layers, heads, hidden size, dtype...).
        exec_points: ``(x, y, seconds)`` prefill measurements.
        swap_out_per_page_s: seconds per page, HBM -> DRAM, in large batches.
        swap_in_per_page_s: seconds per page, DRAM -> HBM, in large batches.
        transfer_per_page_s: seconds per page between instances (see ``transfer_basis``).
        page_size: tokens per page.
        page_nbytes: bytes per page image (all layers, K and V).
        decode_points: ``(batch, context, seconds)`` decode-step measurements (may be empty).
        transfer_basis: how ``transfer_per_page_s`` was obtained.
        meta: free-form provenance.
        version: schema version.
    """

    device: str
    model_shape: dict[str, Any]
    exec_points: list[tuple[int, int, float]]
    swap_out_per_page_s: float
    swap_in_per_page_s: float
    transfer_per_page_s: float
    page_size: int
    page_nbytes: int
    decode_points: list[tuple[int, int, float]] = field(default_factory=list)
    transfer_basis: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.exec_points:
            raise ValueError("a cost table needs at least one exec point")
        rows: dict[int, dict[float, float]] = {}
        for x, y, t in self.exec_points:
            if x <= 0 or not 0 <= y < x or t <= 0:
                raise ValueError(f"bad exec point {(x, y, t)}: need 0 <= y < x and t > 0")
            rows.setdefault(int(x), {})[y / x] = float(t)
        self._xs = sorted(rows)
        self._rows = [(sorted(rows[x]), [rows[x][f] for f in sorted(rows[x])]) for x in self._xs]
        dec: dict[int, dict[int, float]] = {}
        for b, c, t in self.decode_points:
            if b <= 0 or c < 0 or t <= 0:
                raise ValueError(f"bad decode point {(b, c, t)}")
            dec.setdefault(int(b), {})[int(c)] = float(t)
        self._dec_bs = sorted(dec)
        self._dec_rows = [(sorted(dec[b]), [dec[b][c] for c in sorted(dec[b])])
                          for b in self._dec_bs]

    # -- queries ---------------------------------------------------------------------------

    @property
    def swap_per_page_s(self) -> float:
        """Mean of the swap-out and swap-in costs per page."""
        return 0.5 * (self.swap_out_per_page_s + self.swap_in_per_page_s)

    def _row_time(self, i: int, frac: float) -> float:
        """Time of prompt length ``self._xs[i]`` at cached fraction ``frac``."""
        fracs, times = self._rows[i]
        t = _interp(fracs, times, frac)
        if frac > fracs[-1]:
            # Beyond the highest measured hit ratio: never below pure new-token scaling.
            t = max(t, times[-1] * (1.0 - frac) / (1.0 - fracs[-1]))
        return max(t, 0.0)

    def exec_time(self, x: int, y: int = 0) -> float:
        """Estimated prefill time of ``x`` prompt tokens of which the first ``y`` are cached.

        Linear in the cached fraction ``y / x`` within each measured prompt length, then linear
        in ``x`` between the two nearest measured lengths. Above the longest measured prompt the
        last two lengths are extrapolated linearly; below the shortest the first two are, clamped
        between proportional scaling and the shortest prompt's time (small prefills are bound by
        reading the weights, not by the token count). A full hit (``y == x``) still computes one
        token, like SGLang.

        Args:
            x: prompt tokens (> 0).
            y: cached prefix tokens (``0 <= y <= x``).

        Returns:
            Seconds.

        Raises:
            ValueError: if ``x <= 0`` or ``y`` is outside ``[0, x]``.
        """
        if x <= 0 or not 0 <= y <= x:
            raise ValueError(f"need x > 0 and 0 <= y <= x, got x={x}, y={y}")
        y = min(y, x - 1)
        frac = y / x
        xs = self._xs
        if x < xs[0]:
            # NOTE: the rows extrapolated below the shortest prompt have different slopes (a hit
            # could come out dearer than a miss): scale the shortest row's hit profile instead.
            miss = [self._row_time(i, 0.0) for i in range(len(xs))]
            t = _interp([float(v) for v in xs], miss, float(x))
            t = min(max(t, miss[0] * x / xs[0]), miss[0])
            return max(t * self._row_time(0, frac) / miss[0], 0.0)
        per_x = [self._row_time(i, frac) for i in range(len(xs))]
        t = _interp([float(v) for v in xs], per_x, float(x))
        if y > 0:
            t = min(t, self.exec_time(x, 0))  # a cached prefix never costs time
        return max(t, 0.0)

    def prefix_saving(self, x: int, y: int) -> float:
        """Prefill time a cached prefix of ``y`` tokens saves on an ``x``-token prompt.

        Args:
            x: prompt tokens.
            y: cached prefix tokens.

        Returns:
            ``exec_time(x, 0) - exec_time(x, y)`` in seconds.
        """
        return self.exec_time(x, 0) - self.exec_time(x, y)

    def swap_time(self, num_pages: int, direction: str = "in") -> float:
        """Time to swap ``num_pages`` pages.

        Args:
            num_pages: pages.
            direction: ``"in"`` (DRAM -> HBM) or ``"out"`` (HBM -> DRAM).

        Returns:
            Seconds.
        """
        if direction not in ("in", "out"):
            raise ValueError(f"direction must be 'in' or 'out', got {direction!r}")
        per = self.swap_in_per_page_s if direction == "in" else self.swap_out_per_page_s
        return num_pages * per

    def transfer_time(self, num_pages: int) -> float:
        """Time to transfer ``num_pages`` pages between instances.

        Args:
            num_pages: pages.

        Returns:
            Seconds.
        """
        return num_pages * self.transfer_per_page_s

    def pages_for(self, tokens: int) -> int:
        """Pages that hold ``tokens`` tokens.

        Args:
            tokens: token count.

        Returns:
            ``ceil(tokens / page_size)``.
        """
        return -(-tokens // self.page_size)

    def decode_time(self, batch: int, context: int) -> float:
        """Estimated time of one decode step of ``batch`` sequences of ``context`` tokens each.

        Bilinear in batch and context over the measured grid, extrapolated linearly.

        Args:
            batch: sequences in the step.
            context: tokens of context per sequence.

        Returns:
            Seconds.

        Raises:
            ValueError: if the table has no decode points.
        """
        if not self._dec_bs:
            raise ValueError(f"table for {self.device!r} has no decode points")
        per_b = [_interp([float(c) for c in cs], ts, float(context)) for cs, ts in self._dec_rows]
        return max(_interp([float(b) for b in self._dec_bs], per_b, float(batch)), 0.0)

    # -- (de)serialisation -----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON form (module docstring).

        Returns:
            A JSON-able dict.
        """
        return {
            "version": self.version,
            "device": self.device,
            "model_shape": self.model_shape,
            "page_size": self.page_size,
            "page_nbytes": self.page_nbytes,
            "exec": [[int(x), int(y), float(t)] for x, y, t in self.exec_points],
            "decode": [[int(b), int(c), float(t)] for b, c, t in self.decode_points],
            "swap_out_per_page_s": self.swap_out_per_page_s,
            "swap_in_per_page_s": self.swap_in_per_page_s,
            "swap_per_page_s": self.swap_per_page_s,
            "transfer_per_page_s": self.transfer_per_page_s,
            "transfer_basis": self.transfer_basis,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CostTable:
        """Parse and validate a table.

        Args:
            obj: the JSON form.

        Returns:
            The table.

        Raises:
            ValueError: unknown version or missing / malformed fields.
        """
        version = obj.get("version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"unsupported cost table version {version!r} (want {SCHEMA_VERSION})")
        missing = [k for k in ("device", "model_shape", "exec", "swap_out_per_page_s",
                               "swap_in_per_page_s", "transfer_per_page_s", "page_size",
                               "page_nbytes") if k not in obj]
        if missing:
            raise ValueError(f"cost table lacks {missing}")
        return cls(
            device=str(obj["device"]),
            model_shape=dict(obj["model_shape"]),
            exec_points=[(int(x), int(y), float(t)) for x, y, t in obj["exec"]],
            swap_out_per_page_s=float(obj["swap_out_per_page_s"]),
            swap_in_per_page_s=float(obj["swap_in_per_page_s"]),
            transfer_per_page_s=float(obj["transfer_per_page_s"]),
            page_size=int(obj["page_size"]),
            page_nbytes=int(obj["page_nbytes"]),
            decode_points=[(int(b), int(c), float(t)) for b, c, t in obj.get("decode", [])],
            transfer_basis=str(obj.get("transfer_basis", "")),
            meta=dict(obj.get("meta", {})),
            version=int(version),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table as indented JSON.

        Args:
            path: file to write.
        """
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=1)
            f.write("\n")


def available_tables() -> list[str]:
    """Names of the tables shipped with the package (``tables/<name>.json``).

    Returns:
        Sorted names, e.g. ``["cpu-bench", "nvidia-h100-80gb-hbm3"]``.
    """
    root = resources.files(_TABLES_PACKAGE).joinpath(_TABLES_DIR)
    if not root.is_dir():
        return []
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_table(name_or_path: str | os.PathLike[str]) -> CostTable:
    """Load a cost table from a file path or by shipped table name.

    Args:
        name_or_path: a JSON file path, or a name from :func:`available_tables`.

    Returns:
        The parsed table.

    Raises:
        FileNotFoundError: neither a file nor a shipped table.
        ValueError: the file is not a valid table.
    """
    p = os.fspath(name_or_path)
    if os.path.isfile(p):
        with open(p, encoding="utf-8") as f:
            return CostTable.from_json(json.load(f))
    res = resources.files(_TABLES_PACKAGE).joinpath(_TABLES_DIR, f"{p}.json")
    if res.is_file():
        return CostTable.from_json(json.loads(res.read_text(encoding="utf-8")))
    raise FileNotFoundError(f"no cost table {p!r}; shipped: {available_tables()}")


def device_table_name(device_name: str) -> str:
    """File-name form of a device name (``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``).

    Args:
        device_name: e.g. ``torch.cuda.get_device_name()``.

    Returns:
        Lower-case name with runs of other characters replaced by ``-``.
    """
    out, dash = [], False
    for ch in device_name.lower():
        if ch.isalnum():
            out.append(ch)
            dash = False
        elif not dash and out:
            out.append("-")
            dash = True
    return "".join(out).strip("-")
