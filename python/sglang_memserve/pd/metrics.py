"""What crosses the wire in a PD pair, read from SGLang's Prometheus endpoint.

SGLang's prefill instance (``--enable-metrics``) observes every finished KV transfer into the
histogram ``sglang:kv_transfer_total_mb``: the bytes of the pages it actually sent, i.e. after
decode's radix-cache prefix was skipped (``decode_prefix_len``). Its ``_sum`` and ``_count``
give the total MB and the number of transfers; divided by the bytes of one token's KV over all
layers, the MB become tokens (pages of ``page_size`` tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import requests

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+"
                     r"(?P<value>[-+0-9.eEinfNa]+)$")


def scrape(url: str, timeout: float = 10.0) -> dict[str, float]:
    """``GET url/metrics``: metric name -> value, summed over label sets."""
    text = requests.get(f"{url}/metrics", timeout=timeout).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line.strip())
        if m is None:
            continue
        out[m["name"]] = out.get(m["name"], 0.0) + float(m["value"])
    return out


@dataclass(frozen=True)
class TransferStats:
    """Cumulative KV transfers reported by a prefill instance."""

    transfers: int
    total_mb: float

    def __sub__(self, other: TransferStats) -> TransferStats:
        return TransferStats(self.transfers - other.transfers, self.total_mb - other.total_mb)

    def tokens(self, bytes_per_token: int) -> int:
        """The MB as KV tokens (``bytes_per_token``: K+V of one token over all layers)."""
        return round(self.total_mb * 1024 * 1024 / bytes_per_token)


def kv_transfer_stats(prefill_url: str) -> TransferStats:
    """Prefill's cumulative ``sglang:kv_transfer_total_mb`` (count and sum)."""
    m = scrape(prefill_url)
    return TransferStats(int(m.get("sglang:kv_transfer_total_mb_count", 0)),
                         m.get("sglang:kv_transfer_total_mb_sum", 0.0))


def kv_bytes_per_token(model_path: str, dtype_bytes: int = 4) -> int:
    """K and V of one token over all layers, from the model's ``config.json`` (MHA/GQA)."""
    import json
    from pathlib import Path

    cfg = json.loads((Path(model_path) / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes
