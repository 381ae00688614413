"""Pure-torch pieces of fitting a Gaussian mixture to a map in Fourier space.

The fit compares the analytic Fourier transform of the mixture
(:func:`~gmmsession.kernels.gmm.gaussians_rfft_3d`) with the map's centred rfft
(:func:`~gmmsession.kernels.fourier.rfft_centered_3d`) on a **Fourier-cropped grid**: only
the rfft elements with integer frequency index ``|k_axis| < b / 2`` (``b`` from
:func:`fit_box_size`) are used, so the cost follows the target resolution, not the box.
The cropped grid has the full grid's frequency spacing ``1 / (box * pixel)``; its shell
indices (``round(|k|)`` in Fourier pixels, RELION's rule, :func:`~gmmsession.kernels.fsc.shell_index_rfft`)
are the full grid's.

Loss (:func:`fourier_fit_loss`): the per-shell **relative** squared error

    L = (1 / S) sum_{shells s <= s_max} sum_{k in s} |F_gmm(k) - F_map(k)|^2 / sum_{k in s} |F_map(k)|^2

which weighs every shell up to the target resolution equally (an FSC-like loss: a shell
with relative error ``e`` has FSC of about ``1 - e / 2`` when the powers match), so high
shells are not swamped by the low-frequency power.

Also here: nearest-neighbour distances of point sets (the statistic that sets the number
of Gaussians, see :func:`nearest_neighbour_distances`).
"""

from __future__ import annotations

import math

import torch

from gmmsession.kernels.fsc import shell_index_rfft, shell_sums_rfft
from gmmsession.kernels.gmm import gaussians_rfft_3d

__all__ = [
    "fit_box_size",
    "max_shell_for_resolution",
    "crop_rfft_3d",
    "gaussians_rfft_3d_cropped",
    "shell_weights_rfft_3d",
    "fourier_fit_loss",
    "shell_correlation_rfft_3d",
    "nearest_neighbour_distances",
]


def max_shell_for_resolution(box_size: int, pixel_size_angstrom: float, resolution_angstrom: float) -> int:
    """Last shell index ``i`` whose resolution ``box * pixel / i`` is at or coarser than the target.

    ``floor(box * pixel / resolution)`` (with a tiny tolerance so that a target exactly on a
    shell selects it), at most ``box // 2`` (Nyquist).
    """
    if box_size < 2 or pixel_size_angstrom <= 0 or resolution_angstrom <= 0:
        raise ValueError(
            f"need box_size >= 2 and positive pixel size and resolution, got {box_size}, {pixel_size_angstrom}, {resolution_angstrom}"
        )
    shell = math.floor(box_size * pixel_size_angstrom / resolution_angstrom + 1e-9)
    return int(min(shell, box_size // 2))


def fit_box_size(box_size: int, pixel_size_angstrom: float, resolution_angstrom: float) -> int:
    """Even box ``b`` of the cropped rfft grid holding every shell up to the target resolution.

    Shell ``s`` (``round(|k|) = s``) reaches ``|k| < s + 0.5``; the cropped grid holds
    ``-b/2 .. b/2 - 1`` on the full axes and ``0 .. b/2`` on the half axis, so
    ``b = 2 * (s_max + 1)`` contains all of shells ``0 .. s_max`` (:func:`max_shell_for_resolution`).
    Returns ``min(box_size, 2 * (s_max + 1))``.
    """
    s_max = max_shell_for_resolution(box_size, pixel_size_angstrom, resolution_angstrom)
    return int(min(box_size, 2 * (s_max + 1)))


def _crop_indices(box_size: int, box_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into the full grid's fftfreq axis and rfftfreq axis of the cropped grid's elements."""
    full = torch.fft.fftfreq(box_out, d=1.0 / box_out, device=device).round().to(torch.long) % box_size
    half = torch.arange(box_out // 2 + 1, device=device)
    return full, half


def crop_rfft_3d(spectrum: torch.Tensor, box_size: int, box_out: int) -> torch.Tensor:
    """The low-frequency block of a centred 3D rfft, values unchanged (no rescaling).

    Parameters
    ----------
    spectrum : (..., box, box, box // 2 + 1) complex tensor (``[kz, ky, kx]``).
    box_size : the real-space box ``box``.
    box_out : cropped box ``b <= box`` (even, or equal to ``box``).

    Returns
    -------
    (..., b, b, b // 2 + 1) complex tensor: the elements with frequency indices
    ``kz, ky in fftfreq(b) * b`` and ``kx in 0 .. b // 2`` of the full grid, laid out as a
    ``b``-box rfft (same frequency spacing as the full grid).
    """
    if spectrum.ndim < 3 or spectrum.shape[-3:] != (box_size, box_size, box_size // 2 + 1):
        raise ValueError(f"spectrum must end with ({box_size}, {box_size}, {box_size // 2 + 1}), got {tuple(spectrum.shape)}")
    if not (2 <= box_out <= box_size) or (box_out != box_size and box_out % 2):
        raise ValueError(f"box_out must be even and in [2, {box_size}] (or equal to it), got {box_out}")
    if box_out == box_size:
        return spectrum
    full, half = _crop_indices(box_size, box_out, spectrum.device)
    return spectrum[..., full, :, :][..., :, full, :][..., half]


def gaussians_rfft_3d_cropped(
    positions_angstrom: torch.Tensor,
    amplitudes: torch.Tensor,
    sigmas_angstrom: torch.Tensor,
    box_size: int,
    pixel_size_angstrom: float,
    box_out: int,
    chunk_size: int = 512,
) -> torch.Tensor:
    """Analytic 3D transform of a mixture on the Fourier-cropped grid of :func:`crop_rfft_3d`.

    Equal to ``crop_rfft_3d(gaussians_rfft_3d(..., box_size, pixel_size_angstrom), box_size, box_out)``
    but computed directly on the ``b``-box grid: it is :func:`~gmmsession.kernels.gmm.gaussians_rfft_3d`
    on a ``b`` box with pixel ``pixel * box / b`` (same frequency spacing), rescaled by
    ``(box / b)^3`` for the voxel-unit mass of the full grid.

    Parameters
    ----------
    positions_angstrom : (..., G, 3) ``(x, y, z)`` in Å from voxel ``box // 2``.
    amplitudes, sigmas_angstrom : (..., G) peak amplitudes and widths (Å).
    box_size, pixel_size_angstrom : the full map's box and voxel size (Å).
    box_out : cropped box ``b``.
    chunk_size : Gaussians per contraction.

    Returns
    -------
    (..., b, b, b // 2 + 1) complex tensor.
    """
    if not (2 <= box_out <= box_size):
        raise ValueError(f"box_out must be in [2, {box_size}], got {box_out}")
    if box_out == box_size:
        return gaussians_rfft_3d(positions_angstrom, amplitudes, sigmas_angstrom, box_size, pixel_size_angstrom, chunk_size)
    scale = box_size / box_out
    out = gaussians_rfft_3d(positions_angstrom, amplitudes, sigmas_angstrom, box_out, pixel_size_angstrom * scale, chunk_size)
    return out * scale**3


def shell_weights_rfft_3d(
    map_spectrum: torch.Tensor, max_shell: int, min_shell: int = 0, power_floor_fraction: float = 1e-9
) -> torch.Tensor:
    """Per-element weights of :func:`fourier_fit_loss`: ``1 / (S * P_s)`` in shells ``min_shell .. max_shell``.

    Parameters
    ----------
    map_spectrum : (..., b, b, b // 2 + 1) complex tensor (a cropped or full centred rfft).
    max_shell, min_shell : shells included (integer Fourier radii, RELION rounding).
    power_floor_fraction : a shell's mean power per element is raised to at least this fraction
        of the largest one among shells ``1 .. max_shell`` (guards against empty shells).

    Returns
    -------
    real tensor with the spectrum's shape: ``1 / (S * sum_{k in s} |F(k)|^2)`` for element in
    shell ``s`` (``S`` = number of included shells with non-zero power), 0 elsewhere.
    """
    if map_spectrum.ndim < 3 or map_spectrum.shape[-1] != map_spectrum.shape[-2] // 2 + 1 or map_spectrum.shape[-2] != map_spectrum.shape[-3]:
        raise ValueError(f"map_spectrum must be a centred rfft (..., b, b, b // 2 + 1), got {tuple(map_spectrum.shape)}")
    b = int(map_spectrum.shape[-2])
    if not (0 <= min_shell <= max_shell <= b // 2):
        raise ValueError(f"need 0 <= min_shell <= max_shell <= {b // 2} for box {b}, got {min_shell}, {max_shell}")
    idx = shell_index_rfft(b, 3, device=map_spectrum.device)
    n_shells = b // 2 + 1
    power = shell_sums_rfft(map_spectrum.abs().square().to(torch.float64), idx, n_shells)  # (..., n_shells)
    shells = torch.arange(n_shells, device=map_spectrum.device)
    # Shells with (numerically) no power get the power floor instead of an enormous weight:
    # a map low-pass filtered below the target resolution holds only float rounding there.
    counts = shell_sums_rfft(torch.ones_like(map_spectrum.real, dtype=torch.float64), idx, n_shells)
    mean_power = power / counts.clamp_min(1)
    floor = power_floor_fraction * mean_power[..., 1 : max_shell + 1].amax(-1, keepdim=True) if max_shell >= 1 else 0.0
    power = torch.maximum(power, floor * counts)
    use = (shells >= min_shell) & (shells <= max_shell) & (power > 0)
    count = use.sum(-1, keepdim=True).clamp_min(1)
    per_shell = torch.where(use, 1.0 / (count * torch.where(use, power, torch.ones_like(power))), torch.zeros_like(power))
    per_shell = torch.cat([per_shell, torch.zeros_like(per_shell[..., :1])], dim=-1)  # corners beyond Nyquist
    weights = per_shell[..., idx.clamp(max=n_shells)]
    return weights.to(map_spectrum.real.dtype)


def fourier_fit_loss(gmm_spectrum: torch.Tensor, map_spectrum: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted squared Fourier distance ``sum_k w_k |F_gmm(k) - F_map(k)|^2``, batched.

    With ``weights`` from :func:`shell_weights_rfft_3d` this is the mean over shells of the
    relative squared error (module docstring). Shapes must match (``weights`` real).

    Returns
    -------
    (...) real tensor (one loss per leading index); differentiable in ``gmm_spectrum``.
    """
    if gmm_spectrum.shape != map_spectrum.shape or weights.shape[-3:] != map_spectrum.shape[-3:]:
        raise ValueError(
            f"gmm_spectrum {tuple(gmm_spectrum.shape)}, map_spectrum {tuple(map_spectrum.shape)} and weights "
            f"{tuple(weights.shape)} must share the grid shape"
        )
    diff = torch.view_as_real(gmm_spectrum - map_spectrum)
    return (diff.square().sum(-1) * weights).sum(dim=(-3, -2, -1))


def shell_correlation_rfft_3d(spectrum1: torch.Tensor, spectrum2: torch.Tensor) -> torch.Tensor:
    """FSC per shell of two centred rffts given in Fourier space (cropped or full grids).

    Same rule as :func:`~gmmsession.kernels.fsc.fsc_3d` (rfft half-space as stored, RELION
    shells, sums in float64). Inputs ``(..., b, b, b // 2 + 1)``; returns ``(..., b // 2 + 1)``
    float64 (0 for shells with no power).
    """
    if spectrum1.shape != spectrum2.shape or spectrum1.ndim < 3 or spectrum1.shape[-1] != spectrum1.shape[-2] // 2 + 1:
        raise ValueError(f"spectra must be matching centred rffts (..., b, b, b // 2 + 1), got {tuple(spectrum1.shape)} and {tuple(spectrum2.shape)}")
    b = int(spectrum1.shape[-2])
    idx = shell_index_rfft(b, 3, device=spectrum1.device)
    r1, r2 = torch.view_as_real(spectrum1), torch.view_as_real(spectrum2)
    terms = torch.stack([(r1 * r2).sum(-1), (r1 * r1).sum(-1), (r2 * r2).sum(-1)], dim=-4).to(torch.float64)
    num, den1, den2 = shell_sums_rfft(terms, idx, b // 2 + 1).unbind(-2)
    den = torch.sqrt(den1 * den2)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


def nearest_neighbour_distances(positions_angstrom: torch.Tensor, chunk_size: int = 2048) -> torch.Tensor:
    """Distance from every point to its nearest other point, batched, in chunks.

    Parameters
    ----------
    positions_angstrom : (..., G, 3) tensor, ``G >= 2`` (any length unit; Å by convention).
    chunk_size : rows of the distance matrix per block (memory ``chunk_size * G``).

    Returns
    -------
    (..., G) tensor of nearest-neighbour distances (same unit and dtype). Coincident points
    have distance 0.
    """
    if positions_angstrom.ndim < 2 or positions_angstrom.shape[-1] != 3 or positions_angstrom.shape[-2] < 2:
        raise ValueError(f"positions_angstrom must have shape (..., G, 3) with G >= 2, got {tuple(positions_angstrom.shape)}")
    lead = positions_angstrom.shape[:-2]
    g = positions_angstrom.shape[-2]
    pos = positions_angstrom.reshape(-1, g, 3)
    out = torch.empty(pos.shape[0], g, dtype=pos.dtype, device=pos.device)
    rows = torch.arange(g, device=pos.device)
    for start in range(0, g, chunk_size):
        stop = min(start + chunk_size, g)
        d = torch.cdist(pos[:, start:stop], pos, compute_mode="donot_use_mm_for_euclid_dist")  # (n, c, G), exact
        d[:, rows[: stop - start], rows[start:stop]] = float("inf")
        out[:, start:stop] = d.min(-1).values
    return out.reshape(*lead, g)
