"""Human-readable quantities for messages and reports (no click, no rich: libraries use it)."""

from __future__ import annotations


def human_bytes(count: float) -> str:
    """``1536`` → ``1.5 KiB`` (binary units, one decimal)."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(count)
