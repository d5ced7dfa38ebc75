"""Workload replay against MemServe / SGLang servers, and the metrics it reports."""
