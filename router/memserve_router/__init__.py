"""MemServe's global scheduler (router)."""
