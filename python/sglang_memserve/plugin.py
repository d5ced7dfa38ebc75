"""Entry point of the ``sglang.srt.plugins`` group; filled in below."""


def load() -> None:
    pass
