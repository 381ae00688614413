"""RELION star files through the starfile package."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import starfile

from gmmsession.data.io._atomic import atomic_path

__all__ = ["write_star_blocks", "write_star_blocks_lossless"]


def write_star_blocks(path: str | os.PathLike, blocks: dict[str, pd.DataFrame]) -> Path:
    """Write star data blocks (name -> table) atomically, in the given order."""
    path = Path(path)
    with atomic_path(path, suffix=".star") as tmp:
        starfile.write(blocks, tmp, overwrite=True)
    return path


def _shortest_float(x: float) -> str:
    """Shortest decimal that reads back as the same float64 (``repr``), e.g. ``3.57846e-06``."""
    return repr(float(x))


def write_star_blocks_lossless(
    path: str | os.PathLike, blocks: dict[str, pd.DataFrame | dict], *, version: int | None = None
) -> Path:
    """Write star data blocks atomically with every float written exactly.

    Unlike :func:`write_star_blocks` (``%.6f``, which turns ``3.57846e-06`` into
    ``0.000004``), floats are written as the shortest decimal that parses back to the same
    float64, so a read -> write -> read round trip is lossless.

    Parameters
    ----------
    path : target file.
    blocks : data block name -> table (loop block) or dict (simple block), in file order.
    version : int, optional
        If given, a ``# version NNNNN`` line (as RELION writes, e.g. 30001) is put before
        every ``data_`` block.
    """
    path = Path(path)
    with atomic_path(path, suffix=".star") as tmp:
        starfile.write(blocks, tmp, overwrite=True, float_format=_shortest_float)
        if version is not None:
            lines = tmp.read_text().splitlines()
            out = []
            for line in lines:
                if line.startswith("data_"):
                    out.append(f"# version {int(version)}")
                    out.append("")
                out.append(line)
            tmp.write_text("\n".join(out) + "\n")
    return path
