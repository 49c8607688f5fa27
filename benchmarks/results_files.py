"""A benchmark's result files: ``<name>.json`` (the whole report) and ``<name>.md`` (its table) in
``benchmarks/results/``; the table is printed too."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """This machine as the result files describe it: processor, CPU cores, torch version and threads."""
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def write_results(name: str, report: dict[str, Any], table: str, results_dir: Path = RESULTS) -> None:
    """Writes ``report`` as JSON and ``table`` (markdown) under ``results_dir``, and prints the table."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
    (results_dir / f"{name}.md").write_text(table)
    print(table)
