"""One run per output folder: a lock file that names the process holding it.

Two workflow runs writing into one ``output_dir`` would each reuse or overwrite the other's stages and end
with a folder mixing both runs' models and summary. :func:`output_dir_lock` creates
``<output_dir>/.hf_msd.lock`` atomically (``O_CREAT | O_EXCL``) holding the process id, the host name,
the start time and the command; a second run refuses by name (:class:`OutputDirLockedError`). A lock left
by a process that no longer runs on this host (killed, crashed) is stale: it is taken over with a warning.
A lock from another host cannot be checked and is refused; delete the file once that run is gone. With
several processes only the main process holds the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from accelerate import PartialState
from transformers.utils import logging

from ..errors import InputValueError, UserInputError

logger = logging.get_logger(__name__)

LOCK_FILE = ".hf_msd.lock"


class OutputDirLockedError(UserInputError, RuntimeError):
    """Another run is writing into the same output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _try_create(path: Path, record: dict) -> bool:
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as file:
        json.dump(record, file)
    return True


def _read(path: Path) -> dict | None:
    """The lock's record; None when the file vanished; {} when it is unreadable (holder killed mid-write)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def check_output_dir(output_dir: str | os.PathLike) -> None:
    """Refuse, naming ``--output_dir``, a folder that cannot be created: it, or the closest of its parents
    that exists, is a file."""
    existing = next(
        path for path in (Path(output_dir), *Path(output_dir).absolute().parents) if path.exists()
    )
    if not existing.is_dir():
        raise InputValueError(
            f"--output_dir {output_dir} cannot be created: {existing} is a file, not a folder. "
            "Choose another --output_dir."
        )


def acquire(output_dir: str | os.PathLike) -> Path:
    """Create the lock of ``output_dir`` for this process (taking over a stale one); returns its path.

    Raises:
        OutputDirLockedError: a live process (or one on another host) holds it, named in the message.
    """
    check_output_dir(output_dir)
    path = Path(output_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    record = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)}  # fmt: skip
    for _ in range(3):  # a stale lock removed by a concurrent run: try again
        if _try_create(path, record):
            return path
        holder = _read(path)
        if holder is None:
            continue
        pid, holder_host = holder.get("pid"), holder.get("host")
        if holder_host == host and isinstance(pid, int) and not _alive(pid):
            logger.warning(f"Taking over the stale lock {path} of process {pid}, which no longer runs.")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        if not holder:
            who = "an unreadable lock record"
        else:
            started, command = holder.get("started"), holder.get("command")
            who = f"process {pid} on host {holder_host} (started {started}: {command})"
        raise OutputDirLockedError(
            f"--output_dir {output_dir} is in use by {who}: two runs in one folder would mix their results. "
            f"Wait for it to finish or choose another --output_dir; if no run uses the folder any more, "
            f"delete {path}."
        )
    raise OutputDirLockedError(f"Could not lock --output_dir {output_dir}: {path} keeps changing.")


def release(path: Path) -> None:
    """Remove the lock at ``path`` if this process still holds it."""
    holder = _read(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink()


@contextlib.contextmanager
def output_dir_lock(output_dir: str | os.PathLike, main_process: bool | None = None) -> Iterator[None]:
    """Hold ``output_dir``'s lock while the block runs; see the module docstring. Only the main process of a
    distributed run locks: ``main_process`` (e.g. ``training_args.process_index == 0``), or, when not given,
    accelerate's ``PartialState().is_main_process``."""
    if main_process is None:
        main_process = PartialState().is_main_process
    path = acquire(output_dir) if main_process else None
    try:
        yield
    finally:
        if path is not None:
            release(path)
