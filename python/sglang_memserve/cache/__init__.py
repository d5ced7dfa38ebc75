"""The MemServe tree-cache backend for SGLang (registered as ``--radix-cache-backend memserve``)."""

BACKEND_NAME = "memserve"
