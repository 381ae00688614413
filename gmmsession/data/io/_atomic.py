"""Atomic file writing: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from gmmsession.data.errors import GmmsessionInputError

__all__ = ["atomic_path", "refuse_overwrite_of_inputs"]


def refuse_overwrite_of_inputs(target: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Raise if ``target`` is one of the user's input files (never write over an input)."""
    t = Path(target).resolve()
    for p in inputs:
        if p is None:
            continue
        pp = Path(p)
        if pp.exists() and t.exists() and os.path.samefile(t, pp):
            raise GmmsessionInputError(f"refusing to write {target}: it is an input file of this session ({p})")
        if pp.resolve() == t:
            raise GmmsessionInputError(f"refusing to write {target}: it is an input file of this session ({p})")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(target.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
