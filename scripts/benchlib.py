"""What the benchmark scripts share: import paths and the PASS/FAIL report of their targets."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests"):  # the program's package, and the test helpers that make speech
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def report_targets(targets: list[tuple[str, bool]], written: str) -> int:
    """Print each target as PASS or FAIL and where the results went; exit status 1 if any failed."""
    for name, ok in targets:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(f"result: {written}")
    return 0 if all(ok for _, ok in targets) else 1
