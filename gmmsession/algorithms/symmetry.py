"""Symmetry expansion of a particle set and re-imposition of symmetry on a map.

:func:`expand_symmetry` turns a symmetric particle set into a C1 one for focused work: every
particle is repeated once per operator ``S_k`` of the point group at pose ``A @ S_k``
(:mod:`gmmsession.kernels.symmetry`), keeping its half set, origin and CTF, exactly the poses
``relion_particle_symmetry_expand`` writes (checked in ``tests/relion/test_symmetry_relion.py``).
:func:`symmetrize_map` imposes the symmetry back on a map, optionally weighting each symmetric
copy by a mask (for focused maps whose region of interest covers one asymmetric unit).
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from gmmsession.kernels.conventions import euler_relion_to_matrix, matrix_to_euler_relion
from gmmsession.kernels.masks import sample_volume_at
from gmmsession.kernels.symmetry import normalise_symmetry_name, symmetry_operators

__all__ = ["expand_symmetry", "symmetrize_map"]

_ANGLES = ("rot_deg", "tilt_deg", "psi_deg")


def expand_symmetry(particles: xr.Dataset, symmetry: str) -> xr.Dataset:
    """Each particle repeated at its ``n_ops`` symmetry-related poses (expansion to C1).

    Parameters
    ----------
    particles : xarray.Dataset
        Dimension ``particle`` with ``rot_deg``, ``tilt_deg``, ``psi_deg`` (RELION Euler angles,
        degrees) and any other per-particle variables (schema in :mod:`gmmsession.data.schema`).
    symmetry : str
        Point group (:func:`gmmsession.kernels.symmetry.symmetry_operators`), e.g. ``"C3"``.

    Returns
    -------
    xarray.Dataset with ``n * n_ops`` particles, particle-major (the copies of particle 0
    first, operator 0 = identity first, as ``relion_particle_symmetry_expand`` orders them).
    Every variable and coordinate along ``particle`` is repeated (``half``, origins, CTF, image
    name and stack position are those of the source particle); the angles are those of
    ``A @ S_k`` (RELION's ``Euler_matrix2angles`` branch rules; NaN poses stay NaN); the
    ``particle`` coordinate is renumbered ``0 .. n * n_ops - 1``. Two new variables:
    ``symmetry_source_particle`` (position of the source particle in ``particles``) and
    ``symmetry_operator`` (``k``). ``attrs["symmetry_expanded"]`` holds the canonical group name.
    """
    missing = [v for v in _ANGLES if v not in particles]
    if missing:
        raise ValueError(f"particles lack the pose variables {missing}")
    if "particle" not in particles.dims:
        raise ValueError(f"particles must have a 'particle' dimension, got dims {tuple(particles.dims)}")
    name = normalise_symmetry_name(symmetry)
    ops = symmetry_operators(name)  # (k, 3, 3) float64
    n, k = int(particles.sizes["particle"]), int(ops.shape[0])
    euler = torch.as_tensor(np.stack([particles[v].values for v in _ANGLES], -1).astype(np.float64))
    rotations = euler_relion_to_matrix(euler)  # (n, 3, 3)
    expanded = matrix_to_euler_relion(rotations[:, None] @ ops[None]).reshape(n * k, 3).numpy()
    source = np.repeat(np.arange(n, dtype=np.int64), k)
    out = particles.isel(particle=source)
    out = out.assign_coords(particle=("particle", np.arange(n * k, dtype=np.int64)))
    for i, v in enumerate(_ANGLES):
        out[v] = xr.Variable("particle", expanded[:, i], attrs=particles[v].attrs)
    out["symmetry_source_particle"] = xr.Variable(
        "particle", source, attrs={"units": "1", "long_name": "position of the source particle before expansion"}
    )
    out["symmetry_operator"] = xr.Variable(
        "particle", np.tile(np.arange(k, dtype=np.int64), n), attrs={"units": "1", "long_name": f"operator index in {name}"}
    )
    out.attrs = dict(particles.attrs, symmetry_expanded=name)
    return out


def symmetrize_map(
    volume: torch.Tensor,
    symmetry: str,
    pixel_size_angstrom: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Average of a map over the operators of a point group, optionally mask-weighted.

    The copies are ``V_k(r) = V(S_k @ r)`` (``r = (x, y, z)`` from voxel ``box // 2``), resampled in
    **real space**: the map is first upsampled 2x by Fourier zero-padding (exact for a map
    band-limited to its Nyquist frequency), then sampled with trilinear interpolation at
    ``S_k @ r`` on the fine grid (0 where ``S_k r`` leaves the box). Trilinear interpolation on
    the original grid would attenuate and alias the outer shells (FSC to the exact rotation
    ~0.98 near Nyquist); on the 2x grid the original Nyquist is at a quarter of the fine
    sampling rate. Without a mask the result is ``mean_k V_k``; with a mask ``M`` it is
    ``sum_k M_k V_k / sum_k M_k`` with ``M_k(r) = M(S_k r)`` (trilinear on the original grid:
    masks are smooth), and ``V`` itself wherever ``sum_k M_k`` is 0 (below 1e-6 times its
    maximum). Memory: one ``(2 box)^3`` copy of the map.

    Parameters
    ----------
    volume : (box, box, box) real tensor ``[z, y, x]``.
    symmetry : str
        Point group (:func:`gmmsession.kernels.symmetry.symmetry_operators`), e.g. ``"C3"``.
    pixel_size_angstrom : float
        Voxel size (Å). The rotation is about voxel ``box // 2`` and does not depend on it.
    mask : (box, box, box) real tensor or None
        Non-negative weights, e.g. a soft mask around one asymmetric unit.

    Returns
    -------
    (box, box, box) tensor, dtype and device of ``volume``. A map with the group's symmetry
    comes back unchanged up to interpolation.
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"volume must have shape (box, box, box), got {tuple(volume.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(volume.shape):
        raise ValueError(f"mask {tuple(mask.shape)} must have the shape of volume {tuple(volume.shape)}")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")
    ops = symmetry_operators(symmetry, device=volume.device)
    if ops.shape[0] == 1:
        return volume.clone()
    box = volume.shape[-1]
    work = torch.float64 if volume.dtype == torch.float64 else torch.float32
    vol = volume.to(work)
    fine = _upsample_fourier_2x(vol)
    c = (torch.arange(box, device=volume.device, dtype=torch.float64) - box // 2) * pixel_size_angstrom
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    r = torch.stack([x, y, z], -1)  # (x, y, z) Å of each [z, y, x] voxel
    msk = mask.to(device=volume.device, dtype=work) if mask is not None else None
    num = torch.zeros_like(vol)
    den = torch.zeros_like(vol)
    for op in ops:
        pts = (r @ op.T).to(work)  # S_k @ r
        v_k = sample_volume_at(fine, pts, pixel_size_angstrom / 2)
        if msk is None:
            num += v_k
        else:
            m_k = sample_volume_at(msk, pts, pixel_size_angstrom)
            num += m_k * v_k
            den += m_k
    if msk is None:
        out = num / ops.shape[0]
    else:
        ok = den > 1e-6 * float(den.max().clamp_min(torch.finfo(work).tiny))
        out = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), vol)
    return out.to(volume.dtype)


def _upsample_fourier_2x(volume: torch.Tensor) -> torch.Tensor:
    """``(2 box)^3`` sinc interpolation of a ``(box)^3`` map; voxel ``i`` lands on fine voxel ``2 i``
    relative to the centres (``box // 2`` -> ``box``), values unchanged at the coarse voxels."""
    box = volume.shape[-1]
    spec = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(volume)))  # frequency 0 at box // 2
    if box % 2 == 0:  # split the unpaired Nyquist planes evenly between -N/2 and +N/2 (keeps it real)
        spec = torch.nn.functional.pad(spec, (0, 1, 0, 1, 0, 1))
        for dim in range(3):
            first = spec.narrow(dim, 0, 1) * 0.5
            spec = torch.cat([first, spec.narrow(dim, 1, box - 1), first.clone()], dim)
    n = spec.shape[-1]
    big = spec.new_zeros(2 * box, 2 * box, 2 * box)
    start = box - box // 2
    big[start : start + n, start : start + n, start : start + n] = spec
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(big))).real * 8
