"""Byte counts in and out of text: JVM-style memory strings and human-readable sizes."""

from __future__ import annotations


def parse_memory(text: str) -> int:
    """Bytes in a JVM-style memory string.

    >>> parse_memory("512m"), parse_memory("2g"), parse_memory("100k"), parse_memory("64")
    (536870912, 2147483648, 102400, 67108864)
    """
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().rstrip("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text)) << 20  # Spark reads a bare number of these settings as MiB


def format_bytes(n: float) -> str:
    """Human-readable byte count.

    >>> format_bytes(0), format_bytes(1536), format_bytes(3 * 2**30)
    ('0 B', '1.5 KiB', '3.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
