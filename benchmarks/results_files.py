"""A benchmark's result files: ``<name>.json`` (the whole report) and ``<name>.md`` (its table) in
``benchmarks/results/``; the table is printed too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, report: dict[str, Any], table: str, results_dir: Path = RESULTS) -> None:
    """Writes ``report`` as JSON and ``table`` (markdown) under ``results_dir``, and prints the table."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
    (results_dir / f"{name}.md").write_text(table)
    print(table)
