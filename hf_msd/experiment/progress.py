"""Stage headers of the workflow on the console, at the default log level and once per run (main process):
which stage runs, how much work it is, and what was reused."""

from __future__ import annotations

from accelerate import PartialState


def announce(stage: str, message: str) -> None:
    """Print ``[hf_msd] <stage>: <message>`` on the main process."""
    PartialState().print(f"[hf_msd] {stage}: {message}", flush=True)
