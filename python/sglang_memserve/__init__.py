"""sglang-memserve: MemServe (an elastic memory pool for context caching + disaggregated inference) on SGLang."""

__version__ = "0.1.0"
