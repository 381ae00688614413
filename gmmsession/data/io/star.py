"""RELION star files through the starfile package."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import starfile

from gmmsession.data.io._atomic import atomic_path

__all__ = ["write_star_blocks"]


def write_star_blocks(path: str | os.PathLike, blocks: dict[str, pd.DataFrame]) -> Path:
    """Write star data blocks (name -> table) atomically, in the given order."""
    path = Path(path)
    with atomic_path(path, suffix=".star") as tmp:
        starfile.write(blocks, tmp, overwrite=True)
    return path
