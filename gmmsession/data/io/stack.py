"""Lazy, memory-mapped reading of particle images from MRC stacks.

:class:`ParticleImageReader` opens each stack once with ``mrcfile.mmap(permissive=True)``
and copies out only the images asked for, so a stack is never loaded whole. Every problem is
a :class:`~gmmsession.data.errors.GmmsessionInputError` naming the file and the particle:
missing stack, index beyond the stack, a box that differs from the optics group's, a corrupt
MRC, non-finite pixels (:class:`NonFiniteImageError`, which carries the positions).

MRC headers that lie (no ``MAP `` id, pixel size 0 or 1 while the star file says otherwise)
are read anyway: one :class:`~gmmsession.data.io.mrc.MrcHeaderWarning` per file, and the
star file's pixel size is used.

Contrast: images come out in RELION's convention (protein bright). Where the particles
carry ``image_sign`` (cryoSPARC's ``blob/sign``, -1 for cryoSPARC-extracted stacks, which keep
the micrograph's dark-protein contrast) each image is multiplied by its particle's sign;
RELION sets have no ``image_sign`` and their images come back as stored. Every consumer
(chunks, reconstruction, alignment, image checks) reads through this class, so the sign is
applied in exactly one place.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import mrcfile
import numpy as np
import xarray as xr

from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.io.mrc import MrcHeaderWarning, header_problems

__all__ = ["ParticleImageReader", "NonFiniteImageError", "resolve_stack_path", "stack_shape"]


class NonFiniteImageError(GmmsessionInputError):
    """Particle images contain NaN or Inf pixels.

    Attributes
    ----------
    positions : (k,) int64 array
        Positions along ``particle`` of the bad images.
    image_names : list of str
        Their image names.
    """

    def __init__(self, message: str, positions: np.ndarray, image_names: Sequence[str]):
        super().__init__(message)
        self.positions = np.asarray(positions, dtype=np.int64)
        self.image_names = list(image_names)


def resolve_stack_path(stack: str | os.PathLike, search_dirs: Sequence[str | os.PathLike]) -> Path:
    """Absolute path of a stack named relative to one of ``search_dirs``.

    Absolute paths are returned as they are. A relative path is tried under each folder in
    turn; the first that exists wins, and if none exists the first candidate is returned
    (existence is checked when images are read, so metadata-only files still load).
    """
    p = Path(stack)
    if p.is_absolute():
        return p
    candidates = [Path(os.path.abspath(Path(d) / p)) for d in search_dirs]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0] if candidates else Path(os.path.abspath(p))


def stack_shape(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """``(n, ny, nx)`` from an MRC header, or None if the file is absent or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                h = mrc.header
                return int(h.nz), int(h.ny), int(h.nx)
    except Exception:  # a corrupt file is reported when its images are read
        return None


class _OpenStack:
    def __init__(self, path: Path, mrc, data: np.ndarray):
        self.path = path
        self.mrc = mrc
        self.data = data


class ParticleImageReader:
    """Read particle images on demand from the stacks named in a particles dataset.

    Parameters
    ----------
    particles : xarray.Dataset
        With ``stack_path``, ``stack_index``, ``optics_group`` and ``image_name``; optionally
        ``image_sign`` (+1/-1 per particle, see :mod:`gmmsession.data.schema`).
    optics : xarray.Dataset
        With ``pixel_size_angstrom`` and ``box_size`` per optics group (a box of 0 means
        unknown: the stack's own box is accepted).

    Notes
    -----
    Files are opened on first use and kept open (memory-mapped) until :meth:`close`; use the
    reader as a context manager. Images come back as float32 ``(n, box, box)`` arrays with
    rows = y, columns = x, as stored times the particle's ``image_sign`` when the dataset has
    one (cryoSPARC sets: -1 turns dark-protein stacks into RELION's protein-bright contrast),
    exactly as stored otherwise (RELION sets); never normalised, filtered or mirrored.

    Raises
    ------
    GmmsessionInputError
        An ``image_sign`` other than +1/-1 (naming the particle), an undefined optics group.
    """

    def __init__(self, particles: xr.Dataset, optics: xr.Dataset):
        self._stack_path = np.asarray(particles["stack_path"].values, dtype=object)
        self._stack_index = np.asarray(particles["stack_index"].values, dtype=np.int64)
        self._image_name = np.asarray(particles["image_name"].values, dtype=object)
        groups = np.asarray(particles["optics_group"].values, dtype=np.int64)
        known = np.asarray(optics["optics_group"].values, dtype=np.int64)
        order = np.argsort(known)
        pos = np.searchsorted(known[order], groups)
        pos = np.clip(pos, 0, max(len(known) - 1, 0))
        if len(known) == 0 or np.any(known[order][pos] != groups):
            bad = groups[known[order][pos] != groups][0] if len(known) else groups[0]
            raise GmmsessionInputError(f"optics group {bad} is referenced by particles but not defined")
        idx = order[pos]
        self._box = np.asarray(optics["box_size"].values, dtype=np.int64)[idx]
        self._pixel_size = np.asarray(optics["pixel_size_angstrom"].values, dtype=np.float64)[idx]
        self._negate = self._negated_particles(particles)
        self._open: dict[str, _OpenStack] = {}
        self.dropped_positions = np.zeros(0, dtype=np.int64)

    def _negated_particles(self, particles: xr.Dataset) -> np.ndarray | None:
        """Boolean mask of particles whose ``image_sign`` is -1, or None if none is."""
        if "image_sign" not in particles:
            return None
        sign = np.asarray(particles["image_sign"].values, dtype=np.float64)
        if sign.shape != self._stack_path.shape:
            raise GmmsessionInputError(f"image_sign has shape {sign.shape}, expected ({len(self._stack_path)},) like the particles")
        bad = ~np.isin(sign, (1.0, -1.0))
        if bad.any():
            where = particles.attrs.get("source_path", "<particles>")
            raise GmmsessionInputError(
                f"{where}: image_sign must be +1 or -1; particle {self._image_name[bad][0]} has {float(sign[bad][0])!r}"
            )
        negate = sign < 0
        return negate if negate.any() else None

    # -- resource handling -------------------------------------------------------------
    def close(self) -> None:
        """Close every open stack."""
        for s in self._open.values():
            try:
                s.mrc.close()
            except Exception:  # closing is best effort
                pass
        self._open.clear()

    def __enter__(self) -> ParticleImageReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __len__(self) -> int:
        return len(self._stack_path)

    # -- opening -----------------------------------------------------------------------
    def _stack(self, key: str, first_position: int) -> _OpenStack:
        if key in self._open:
            return self._open[key]
        path = Path(key)
        name = self._image_name[first_position]
        if not path.is_file():
            raise GmmsessionInputError(f"particle stack not found: {path} (needed by particle {name})")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                mrc = mrcfile.mmap(path, mode="r", permissive=True)
            except Exception as exc:  # mrcfile raises ValueError/EOFError/OSError on corrupt files
                raise GmmsessionInputError(f"{path}: corrupt or unreadable MRC stack ({exc}); needed by particle {name}") from exc
        if mrc.data is None:
            mrc.close()
            detail = f" ({caught[-1].message})" if caught else ""
            raise GmmsessionInputError(f"{path}: corrupt MRC stack, no readable data block{detail}; needed by particle {name}")
        data = mrc.data
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            mrc.close()
            raise GmmsessionInputError(f"{path}: expected a stack of 2D images, got data of shape {data.shape}")
        problems = header_problems(caught)
        header_px = float(mrc.voxel_size.x)
        star_px = float(self._pixel_size[first_position])
        if not (abs(header_px - star_px) <= 1e-3 * star_px):
            problems.append(f"header pixel size {header_px:g} Å, star file says {star_px:g} Å (using {star_px:g} Å)")
        if problems:
            warnings.warn(f"{path}: MRC header problems: {'; '.join(problems)}; read permissively", MrcHeaderWarning, stacklevel=4)
        opened = _OpenStack(path, mrc, data)
        self._open[key] = opened
        return opened

    # -- reading -----------------------------------------------------------------------
    def _positions(self, positions: np.ndarray | Sequence[int] | slice | None) -> np.ndarray:
        n = len(self)
        if positions is None:
            return np.arange(n, dtype=np.int64)
        if isinstance(positions, slice):
            return np.arange(n, dtype=np.int64)[positions]
        pos = np.asarray(positions)
        if pos.dtype == bool:
            if pos.shape != (n,):
                raise ValueError(f"boolean positions must have shape ({n},), got {pos.shape}")
            return np.flatnonzero(pos)
        pos = pos.astype(np.int64).reshape(-1)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"positions out of range for {n} particles")
        return np.where(pos < 0, pos + n, pos)

    def _read_raw(self, pos: np.ndarray) -> np.ndarray:
        """Images for positions (no finiteness check, ``image_sign`` applied), float32 (k, box, box)."""
        if pos.size == 0:
            box = int(self._box[0]) if len(self._box) else 0
            return np.zeros((0, box, box), dtype=np.float32)
        out: np.ndarray | None = None
        keys = self._stack_path[pos]
        for key in dict.fromkeys(keys):  # files in first-use order
            sel = np.flatnonzero(keys == key)
            stack = self._stack(key, int(pos[sel[0]]))
            n_images, ny, nx = stack.data.shape
            idx = self._stack_index[pos[sel]]
            beyond = idx >= n_images
            if beyond.any() or (idx < 0).any():
                bad = sel[beyond | (idx < 0)][0]
                raise GmmsessionInputError(
                    f"{stack.path}: particle {self._image_name[pos[bad]]} asks for image {self._stack_index[pos[bad]] + 1} "
                    f"(1-based) but the stack holds {n_images} images"
                )
            box = self._box[pos[sel]]
            wrong = (box > 0) & ((box != ny) | (box != nx))
            if wrong.any():
                bad = sel[wrong][0]
                raise GmmsessionInputError(
                    f"{stack.path}: images are {ny} x {nx} pixels but the optics group of particle "
                    f"{self._image_name[pos[bad]]} says box {int(self._box[pos[bad]])}"
                )
            if ny != nx:
                raise GmmsessionInputError(f"{stack.path}: images must be square, got {ny} x {nx}")
            if out is None:
                out = np.empty((len(pos), ny, nx), dtype=np.float32)
            elif out.shape[1:] != (ny, nx):
                raise GmmsessionInputError(
                    f"{stack.path}: box {ny} differs from the {out.shape[1]} of other particles in the same request; "
                    "read optics groups with different boxes separately"
                )
            order = np.argsort(idx, kind="stable")
            uniq, inverse = np.unique(idx[order], return_inverse=True)
            try:
                block = np.asarray(stack.data[uniq], dtype=np.float32)
            except Exception as exc:  # truncated file: the memmap cannot supply the bytes
                raise GmmsessionInputError(f"{stack.path}: corrupt MRC stack, cannot read images ({exc})") from exc
            out[sel[order]] = block[inverse]
        assert out is not None
        if self._negate is not None:
            flip = np.flatnonzero(self._negate[pos])
            if flip.size:
                out[flip] *= -1.0  # image_sign: stored contrast -> RELION's (protein bright)
        return out

    def _nonfinite_mask(self, images: np.ndarray) -> np.ndarray:
        return ~np.isfinite(images).all(axis=(-2, -1))

    def read(self, positions: np.ndarray | Sequence[int] | slice | None = None) -> np.ndarray:
        """Images of the particles at ``positions`` (any order; grouped by file internally).

        Parameters
        ----------
        positions : int array, boolean mask, slice or None (all)
            Positions along the ``particle`` dimension.

        Returns
        -------
        (n, box, box) float32 array in the order of ``positions``, each image multiplied by its
        particle's ``image_sign`` where the dataset has one.

        Raises
        ------
        NonFiniteImageError
            If an image holds NaN/Inf (its ``positions`` say which; see :meth:`find_nonfinite`
            and ``iter_chunks(..., on_nonfinite="drop")``).
        GmmsessionInputError
            Missing or corrupt stack, index beyond the stack, box mismatch.
        """
        pos = self._positions(positions)
        images = self._read_raw(pos)
        bad = self._nonfinite_mask(images)
        if bad.any():
            raise self.nonfinite_error(pos[bad])
        return images

    def nonfinite_error(self, bad_positions: np.ndarray) -> NonFiniteImageError:
        names = [str(self._image_name[p]) for p in bad_positions]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return NonFiniteImageError(
            f"{len(names)} particle image(s) contain NaN or Inf pixels: {shown} (drop them with on_nonfinite='drop')",
            bad_positions,
            names,
        )

    def iter_chunks(
        self,
        positions: np.ndarray | Sequence[int] | slice | None = None,
        chunk_size: int = 256,
        *,
        on_nonfinite: str = "raise",
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(positions_chunk, images)`` for consecutive chunks of ``positions``.

        Parameters
        ----------
        positions : as in :meth:`read`.
        chunk_size : int
            Particles per chunk (> 0).
        on_nonfinite : ``"raise"`` or ``"drop"``
            ``"drop"`` leaves images with NaN/Inf pixels out of the chunk (and its positions),
            adding their positions to :attr:`dropped_positions`.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
        if on_nonfinite not in ("raise", "drop"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'drop', got {on_nonfinite!r}")
        pos = self._positions(positions)
        for start in range(0, len(pos), chunk_size):
            chunk = pos[start : start + chunk_size]
            images = self._read_raw(chunk)
            bad = self._nonfinite_mask(images)
            if bad.any():
                if on_nonfinite == "raise":
                    raise self.nonfinite_error(chunk[bad])
                self.dropped_positions = np.concatenate([self.dropped_positions, chunk[bad]])
                chunk, images = chunk[~bad], images[~bad]
            yield chunk, images

    def find_nonfinite(self, positions: np.ndarray | Sequence[int] | slice | None = None, chunk_size: int = 256) -> np.ndarray:
        """Positions (int64 array, ascending in request order) whose images hold NaN or Inf pixels."""
        pos = self._positions(positions)
        bad = []
        for start in range(0, len(pos), chunk_size):
            chunk = pos[start : start + chunk_size]
            bad.append(chunk[self._nonfinite_mask(self._read_raw(chunk))])
        return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)
