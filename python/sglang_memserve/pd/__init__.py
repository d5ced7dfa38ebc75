"""Prefill/decode disaggregation: 1P1D clusters of real processes behind sglang-router."""

from sglang_memserve.pd.cluster import (
    STAGE_LABELS,
    STAGES,
    PdCluster,
    PdOptions,
    RouterProcess,
    pd_cluster,
)

__all__ = ["STAGES", "STAGE_LABELS", "PdCluster", "PdOptions", "RouterProcess", "pd_cluster"]
