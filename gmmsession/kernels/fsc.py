"""Fourier shell / ring correlation, RELION-exact, and phase randomisation.

Definitions follow RELION 3.1 (``src/fftw.cpp``: ``getFSC``, ``randomizePhasesBeyond``;
``src/postprocessing.cpp``: ``calculateFSCtrue`` and the resolution rule in ``run``):

* Shells are indexed by the **integer** frequency radius, ``i = round(sqrt(kx^2 + ky^2 + kz^2))``
  with ``k`` in Fourier pixels (cycles per box). Shells run ``0 .. box // 2``; the corners
  beyond ``box // 2`` are ignored.
* Sums run over the **rfft half-space** exactly as stored (``kx >= 0``), each element once,
  with no extra weight for the Hermitian partners of the ``kx > 0`` elements (as RELION).
* ``FSC_i = sum Re(conj(F1) F2) / sqrt(sum |F1|^2 sum |F2|^2)`` over shell ``i``.
* The resolution at a threshold is the resolution of the **last shell before the first shell
  whose FSC is below the threshold** (no interpolation), ``box * pixel / i`` Å.

Shell sums never build a dense ``(box, box, box, n_shells)`` tensor: every voxel's shell index
is computed once and the sums are ``scatter_add`` over flattened indices.
"""

from __future__ import annotations

import torch

from gmmsession.kernels.fourier import irfft_centered_3d, rfft_centered_2d, rfft_centered_3d

__all__ = [
    "shell_index_rfft",
    "shell_sums_rfft",
    "fsc_3d",
    "frc_2d",
    "shell_resolution_angstrom",
    "last_shell_above_threshold",
    "resolution_at_threshold",
    "phase_randomize_3d",
    "randomization_shell",
    "corrected_masked_fsc",
]


def _check_pair(a: torch.Tensor, b: torch.Tensor, ndim: int, names: tuple[str, str]) -> int:
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim < ndim or len(set(a.shape[-ndim:])) != 1:
        kind = "square" if ndim == 2 else "cubic"
        raise ValueError(f"{names[0]} must be {kind} in its last {ndim} dimensions, got shape {tuple(a.shape)}")
    box = int(a.shape[-1])
    if box < 2 or box % 2:
        raise ValueError(f"box size must be even and >= 2 (RELION shells assume it), got shape {tuple(a.shape)}")
    return box


def shell_index_rfft(box_size: int, ndim: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Shell index of every element of a ``box``-sized rfft grid (RELION rounding).

    Parameters
    ----------
    box_size : int
        Real-space box edge in pixels.
    ndim : int
        2 (images, rfft grid ``(box, box // 2 + 1)``) or 3 (volumes, ``(box, box, box // 2 + 1)``).

    Returns
    -------
    long tensor with the rfft grid's shape, values ``round(|k|)`` in Fourier pixels, clipped to
    ``box // 2 + 1``: that last value marks the corners beyond Nyquist, which every shell sum drops.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    full = torch.fft.fftfreq(box_size, d=1.0 / box_size, device=device, dtype=torch.float64)
    half = torch.fft.rfftfreq(box_size, d=1.0 / box_size, device=device, dtype=torch.float64)
    if ndim == 2:
        r2 = full[:, None] ** 2 + half[None, :] ** 2
    else:
        r2 = (full[:, None, None] ** 2 + full[None, :, None] ** 2) + half[None, None, :] ** 2
    # sqrt(integer) is never exactly m + 0.5, so rounding has no ties (RELION's ROUND = ours).
    idx = torch.round(torch.sqrt(r2)).to(torch.long)
    n_shells = box_size // 2 + 1
    return idx.clamp_(max=n_shells)


def shell_sums_rfft(values: torch.Tensor, shell_index: torch.Tensor, n_shells: int) -> torch.Tensor:
    """Sum real ``values`` over shells, batched over leading dimensions.

    Parameters
    ----------
    values : (..., *grid) real tensor
        Per-element values on an rfft grid (e.g. ``|F|^2``).
    shell_index : (*grid) long tensor from :func:`shell_index_rfft`
        Elements with index ``>= n_shells`` are dropped.
    n_shells : int

    Returns
    -------
    (..., n_shells) tensor, same dtype as ``values``.
    """
    grid_ndim = shell_index.ndim
    if values.shape[values.ndim - grid_ndim :] != shell_index.shape:
        raise ValueError(f"values {tuple(values.shape)} do not end with the shell-index grid {tuple(shell_index.shape)}")
    batch = values.shape[: values.ndim - grid_ndim]
    flat = values.reshape(-1, shell_index.numel())
    idx = shell_index.reshape(1, -1).clamp(max=n_shells).expand(flat.shape[0], -1)
    out = torch.zeros(flat.shape[0], n_shells + 1, dtype=values.dtype, device=values.device)
    out.scatter_add_(1, idx, flat)
    return out[:, :n_shells].reshape(*batch, n_shells)


def _correlation_from_spectra(f1: torch.Tensor, f2: torch.Tensor, box: int, ndim: int) -> torch.Tensor:
    n_shells = box // 2 + 1
    idx = shell_index_rfft(box, ndim, device=f1.device)
    r1, r2 = torch.view_as_real(f1), torch.view_as_real(f2)
    # Per-element products in the input precision, shell sums in float64 (accurate on every device);
    # the three sums share one scatter.
    terms = torch.stack([(r1 * r2).sum(-1), (r1 * r1).sum(-1), (r2 * r2).sum(-1)], dim=-ndim - 1)
    sums = shell_sums_rfft(terms.to(torch.float64), idx, n_shells)
    num, den1, den2 = sums.unbind(-2)
    den = torch.sqrt(den1 * den2)
    # An all-zero shell (zero maps) has no defined correlation; report 0 rather than NaN.
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


def fsc_3d(map1: torch.Tensor, map2: torch.Tensor) -> torch.Tensor:
    """Fourier shell correlation of two real volumes, RELION ``getFSC`` exactly.

    Parameters
    ----------
    map1, map2 : (..., box, box, box) real tensors (``[z, y, x]``), even ``box``.

    Returns
    -------
    (..., box // 2 + 1) tensor in the inputs' dtype: FSC for shells ``0 .. box // 2``
    (shell ``i`` is at ``box * pixel / i`` Å, see :func:`shell_resolution_angstrom`).
    """
    box = _check_pair(map1, map2, 3, ("map1", "map2"))
    out = _correlation_from_spectra(rfft_centered_3d(map1), rfft_centered_3d(map2), box, 3)
    return out.to(map1.dtype)


def frc_2d(images1: torch.Tensor, images2: torch.Tensor) -> torch.Tensor:
    """Fourier ring correlation of real images, batched (same rules as :func:`fsc_3d`).

    Parameters
    ----------
    images1, images2 : (..., box, box) real tensors (``[y, x]``), even ``box``.

    Returns
    -------
    (..., box // 2 + 1) tensor: FRC for rings ``0 .. box // 2``.
    """
    box = _check_pair(images1, images2, 2, ("images1", "images2"))
    out = _correlation_from_spectra(rfft_centered_2d(images1), rfft_centered_2d(images2), box, 2)
    return out.to(images1.dtype)


def shell_resolution_angstrom(
    box_size: int, pixel_size_angstrom: float, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Resolution (Å) of shells ``0 .. box // 2``: ``box * pixel / i``, ``inf`` for shell 0.

    Returns
    -------
    (box // 2 + 1,) float64 tensor.
    """
    if box_size < 2 or pixel_size_angstrom <= 0:
        raise ValueError(f"need box_size >= 2 and pixel_size_angstrom > 0, got {box_size}, {pixel_size_angstrom}")
    i = torch.arange(box_size // 2 + 1, device=device, dtype=torch.float64)
    return (box_size * pixel_size_angstrom) / i  # 1/0 -> inf for shell 0


def last_shell_above_threshold(fsc: torch.Tensor, threshold: float = 0.143) -> torch.Tensor:
    """RELION's resolution shell: the last shell before the first one with ``fsc < threshold``.

    Scans from shell 0 as ``relion_postprocess`` does. Returns 0 when shell 0 or 1 already falls
    below (no resolution), and ``n_shells - 1`` (Nyquist) when the curve never drops.

    Parameters
    ----------
    fsc : (..., n_shells) tensor

    Returns
    -------
    (...,) long tensor of shell indices.
    """
    if fsc.ndim < 1 or fsc.shape[-1] < 1:
        raise ValueError(f"fsc must have shape (..., n_shells), got {tuple(fsc.shape)}")
    below = fsc < threshold
    n = fsc.shape[-1]
    pos = torch.arange(n, device=fsc.device).expand_as(below)
    first_below = torch.where(below, pos, torch.full_like(pos, n)).amin(dim=-1)
    return (first_below - 1).clamp(min=0)


def resolution_at_threshold(
    fsc: torch.Tensor, box_size: int, pixel_size_angstrom: float, threshold: float = 0.143
) -> torch.Tensor:
    """Resolution (Å) where the FSC first drops below ``threshold``, RELION rule (no interpolation).

    ``box * pixel / i`` with ``i`` from :func:`last_shell_above_threshold`; ``inf`` when ``i = 0``.

    Parameters
    ----------
    fsc : (..., box // 2 + 1) tensor
    box_size : int
    pixel_size_angstrom : float
    threshold : float
        0.143 for half-map (gold-standard) FSCs, 0.5 for map-vs-model.

    Returns
    -------
    (...,) float64 tensor, Å.
    """
    if fsc.shape[-1] != box_size // 2 + 1:
        raise ValueError(f"fsc must have box // 2 + 1 = {box_size // 2 + 1} shells, got shape {tuple(fsc.shape)}")
    shell = last_shell_above_threshold(fsc, threshold)
    return shell_resolution_angstrom(box_size, pixel_size_angstrom, device=fsc.device)[shell]


def phase_randomize_3d(
    volume: torch.Tensor, from_shell: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomise Fourier phases at and beyond a shell, keeping amplitudes (RELION ``randomizePhasesBeyond``).

    Every rfft element with ``kx^2 + ky^2 + kz^2 >= from_shell^2`` (Fourier pixels, not rounded:
    RELION's rule) gets a uniform random phase. The phases are taken from the transform of real
    white noise, so they are Hermitian-consistent: the output is the exact inverse of a spectrum
    with the original amplitudes (a round trip reproduces them to float precision).

    Parameters
    ----------
    volume : (..., box, box, box) real tensor
        Each leading index gets independent phases.
    from_shell : int
        First randomised shell radius, in Fourier pixels (``>= 0``).
    generator : torch.Generator, optional
        Source of randomness. The noise is drawn on the generator's device and moved, so a CPU
        generator gives the same result on every device.

    Returns
    -------
    (..., box, box, box) real tensor.
    """
    if volume.ndim < 3 or len(set(volume.shape[-3:])) != 1:
        raise ValueError(f"volume must have shape (..., box, box, box), got {tuple(volume.shape)}")
    if from_shell < 0:
        raise ValueError(f"from_shell must be >= 0, got {from_shell}")
    box = int(volume.shape[-1])
    spectrum = rfft_centered_3d(volume)
    noise_device = generator.device if generator is not None else volume.device
    noise = torch.randn(volume.shape, generator=generator, device=noise_device, dtype=volume.dtype).to(volume.device)
    noise_spectrum = torch.fft.rfftn(noise, dim=(-3, -2, -1))
    # Unit phasors of the noise transform: uniform phases, Hermitian-consistent by construction.
    phasor = noise_spectrum / noise_spectrum.abs().clamp_min(torch.finfo(volume.dtype).tiny)
    full = torch.fft.fftfreq(box, d=1.0 / box, device=volume.device, dtype=torch.float64)
    half = torch.fft.rfftfreq(box, d=1.0 / box, device=volume.device, dtype=torch.float64)
    r2 = (full[:, None, None] ** 2 + full[None, :, None] ** 2) + half[None, None, :] ** 2
    beyond = r2 >= float(from_shell) ** 2
    spectrum = torch.where(beyond, spectrum.abs() * phasor, spectrum)
    return irfft_centered_3d(spectrum, box)


def randomization_shell(fsc_unmasked: torch.Tensor, randomize_at_fsc: float = 0.8) -> int | None:
    """Shell from which ``relion_postprocess`` randomises phases: the first ``i > 0`` with FSC below the value.

    Parameters
    ----------
    fsc_unmasked : (n_shells,) tensor
        FSC of the unmasked half maps.
    randomize_at_fsc : float
        RELION's ``--randomize_at_fsc`` (0.8).

    Returns
    -------
    The shell index, or ``None`` when the curve never drops below (RELION stops with an error
    there; callers decide).
    """
    if fsc_unmasked.ndim != 1:
        raise ValueError(f"fsc_unmasked must have shape (n_shells,), got {tuple(fsc_unmasked.shape)}")
    below = torch.nonzero(fsc_unmasked[1:] < randomize_at_fsc)
    if below.numel() == 0:
        return None
    return int(below[0, 0]) + 1


def corrected_masked_fsc(
    fsc_masked: torch.Tensor, fsc_randomized_masked: torch.Tensor, randomize_from_shell: int
) -> torch.Tensor:
    """Mask-corrected FSC (Chen et al. 2013), RELION ``calculateFSCtrue``.

    ``FSC_true = (FSC_t - FSC_n) / (1 - FSC_n)`` for shells ``>= randomize_from_shell + 2``
    (RELION moves the start two shells out to avoid artefacts at the randomisation edge),
    ``FSC_t`` below that. ``FSC_t`` is the masked FSC, ``FSC_n`` the masked FSC of the
    phase-randomised maps.

    Parameters
    ----------
    fsc_masked, fsc_randomized_masked : (..., n_shells) tensors
    randomize_from_shell : int

    Returns
    -------
    (..., n_shells) tensor.
    """
    if fsc_masked.shape != fsc_randomized_masked.shape:
        raise ValueError(
            f"fsc_masked {tuple(fsc_masked.shape)} and fsc_randomized_masked {tuple(fsc_randomized_masked.shape)} differ"
        )
    n = fsc_masked.shape[-1]
    shells = torch.arange(n, device=fsc_masked.device)
    denom = 1.0 - fsc_randomized_masked
    # FSC_n = 1 only at a shell with perfectly correlated randomised maps; keep FSC_t there.
    safe = torch.where(denom != 0, denom, torch.ones_like(denom))
    corrected = torch.where(denom != 0, (fsc_masked - fsc_randomized_masked) / safe, fsc_masked)
    return torch.where(shells >= randomize_from_shell + 2, corrected, fsc_masked)

