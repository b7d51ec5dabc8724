"""How every benchmark script hands over its figures: the Markdown block printed, and with
--append added to benchmarks/RESULTS.md (the scripts import it from their own directory)."""
from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def publish(text: str, append: bool, out: str | Path = RESULTS) -> None:
    print(text)
    if append:
        with open(out, "a") as f:
            f.write(text)
        print(f"appended to {out}")
