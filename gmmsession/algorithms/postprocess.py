"""Gold-standard FSC of two half maps, with RELION's mask correction (``relion_postprocess``).

The recipe of RELION 3.1 ``Postprocessing::run`` (``src/postprocessing.cpp``):

1. ``FSC_unmasked`` of the half maps.
2. ``FSC_masked`` (``FSC_t``) of the half maps multiplied by the mask.
3. Phases of both unmasked half maps are randomised (independently) from the first shell
   ``i > 0`` where ``FSC_unmasked < randomize_at_fsc`` (0.8), the maps are masked and their FSC is
   ``FSC_n``.
4. ``FSC_corrected = (FSC_t - FSC_n) / (1 - FSC_n)`` from two shells beyond the randomisation
   shell, ``FSC_t`` before.
5. The resolution is the last shell before ``FSC_corrected`` first drops below 0.143. If the
   unmasked curve reaches a higher shell than that, the mask is judged harmful and the unmasked
   curve and resolution are used instead, unless ``force_mask`` (RELION's ``--force_mask``).

Differences from RELION, all deliberate:

* Shell 0 (the DC term) of every curve is set to 1 when it is ``<= 0`` (RELION 3.1 does it for
  the masked curves only, RELION 4+ for all); a zero-mean map otherwise scores "no resolution".
* When ``FSC_unmasked`` never drops below ``randomize_at_fsc`` RELION stops with an error; here
  no phases are randomised, ``FSC_corrected = FSC_masked``, ``randomize_from_shell`` is ``None``
  and a note says so (the maps agree to Nyquist; the resolution is then the Nyquist limit).
* The random phases come from ``seed`` (a CPU generator), so results are reproducible and
  identical on every device; RELION's come from its own generator. The two resolutions agree
  within a shell, not bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from gmmsession.kernels.fsc import (
    corrected_masked_fsc,
    fsc_3d,
    last_shell_above_threshold,
    phase_randomize_3d,
    randomization_shell,
    shell_resolution_angstrom,
)

__all__ = ["FscResult", "gold_standard_fsc"]


@dataclass(frozen=True, eq=False)
class FscResult:
    """FSC curves of two half maps and the resolutions read from them.

    Curves are float64 numpy arrays of shape ``(box // 2 + 1,)`` over shells ``0 .. box // 2``;
    the masked ones are ``None`` when no mask was given.

    Attributes
    ----------
    box_size, pixel_size_angstrom
        Geometry of the half maps.
    shell_resolution_angstrom
        ``box * pixel / i`` per shell, ``inf`` for shell 0.
    fsc_unmasked, fsc_masked, fsc_randomized_masked, fsc_corrected
        RELION's ``rlnFourierShellCorrelationUnmaskedMaps``, ``...MaskedMaps``,
        ``rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps`` and
        ``rlnFourierShellCorrelationCorrected``. Without a randomisation shell the randomised
        curve is all zeros and the corrected curve equals the masked one.
    fsc
        The curve the resolution was read from (corrected, or unmasked without a mask or after
        the mask fallback).
    resolution_angstrom
        Gold-standard resolution (FSC = ``threshold`` on ``fsc``), RELION's ``rlnFinalResolution``.
    resolution_unmasked_angstrom, resolution_corrected_angstrom
        The same rule on the unmasked and on the corrected curve (``None`` without a mask).
    randomize_from_shell, randomize_from_angstrom
        Where phases were randomised (``None`` without a mask or when not needed).
    mask_used
        Whether ``resolution_angstrom`` comes from the masked, corrected curve.
    threshold
        The FSC threshold (0.143).
    notes
        RELION's warnings, as text (mask fallback, high phase-randomised FSC, no randomisation).
    """

    box_size: int
    pixel_size_angstrom: float
    shell_resolution_angstrom: np.ndarray
    fsc_unmasked: np.ndarray
    fsc_masked: np.ndarray | None
    fsc_randomized_masked: np.ndarray | None
    fsc_corrected: np.ndarray | None
    fsc: np.ndarray
    resolution_angstrom: float
    resolution_unmasked_angstrom: float
    resolution_corrected_angstrom: float | None
    randomize_from_shell: int | None
    randomize_from_angstrom: float | None
    mask_used: bool
    threshold: float = 0.143
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_shells(self) -> int:
        return int(self.fsc_unmasked.shape[0])


def _dc_fix(fsc: torch.Tensor) -> torch.Tensor:
    if fsc[0] <= 0:
        fsc = fsc.clone()
        fsc[0] = 1.0
    return fsc


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def gold_standard_fsc(
    half1: torch.Tensor,
    half2: torch.Tensor,
    pixel_size_angstrom: float,
    mask: torch.Tensor | None = None,
    seed: int = 0,
    *,
    threshold: float = 0.143,
    randomize_at_fsc: float = 0.8,
    randomize_from_angstrom: float | None = None,
    force_mask: bool = False,
) -> FscResult:
    """Gold-standard FSC of two half maps, mask-corrected by phase randomisation (``relion_postprocess``).

    Parameters
    ----------
    half1, half2 : (box, box, box) real tensors (``[z, y, x]``, even box), any device.
    pixel_size_angstrom : float
        Voxel size (Å).
    mask : (box, box, box) tensor in [0, 1], optional
        Solvent mask (1 = protein), e.g. from :func:`gmmsession.kernels.masks.threshold_mask_3d`.
    seed : int
        Seed of the phase randomisation.
    threshold : float
        FSC threshold for the resolution (0.143).
    randomize_at_fsc : float
        Randomise from the first shell where the unmasked FSC is below this (RELION ``--randomize_at_fsc``).
    randomize_from_angstrom : float, optional
        Randomise from this resolution instead: shell ``int(box * pixel / resolution)``
        (RELION ``--randomize_at_A``).
    force_mask : bool
        Keep the masked result even when the unmasked curve reaches further (RELION ``--force_mask``).

    Returns
    -------
    FscResult
    """
    if half1.shape != half2.shape or half1.ndim != 3 or len(set(half1.shape)) != 1:
        raise ValueError(f"half1 and half2 must be cubic (box, box, box) volumes of one shape, got {tuple(half1.shape)} and {tuple(half2.shape)}")
    if mask is not None and mask.shape != half1.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from the half maps' {tuple(half1.shape)}")
    if pixel_size_angstrom <= 0:
        raise ValueError(f"pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")
    box = int(half1.shape[-1])
    half2 = half2.to(half1.device, half1.dtype)
    resolutions = shell_resolution_angstrom(box, pixel_size_angstrom)
    notes: list[str] = []

    fsc_unmasked = _dc_fix(fsc_3d(half1, half2).to(torch.float64))
    unmasked_shell = int(last_shell_above_threshold(fsc_unmasked, threshold))
    resolution_unmasked = float(resolutions[unmasked_shell])

    if mask is None:
        return FscResult(
            box_size=box,
            pixel_size_angstrom=float(pixel_size_angstrom),
            shell_resolution_angstrom=_numpy(resolutions),
            fsc_unmasked=_numpy(fsc_unmasked),
            fsc_masked=None,
            fsc_randomized_masked=None,
            fsc_corrected=None,
            fsc=_numpy(fsc_unmasked),
            resolution_angstrom=resolution_unmasked,
            resolution_unmasked_angstrom=resolution_unmasked,
            resolution_corrected_angstrom=None,
            randomize_from_shell=None,
            randomize_from_angstrom=None,
            mask_used=False,
            threshold=threshold,
        )

    mask = mask.to(half1.device, half1.dtype)
    if float(mask.min()) < -1e-6 or float(mask.max()) > 1 + 1e-6:
        raise ValueError(f"mask values must lie in [0, 1], got [{float(mask.min()):g}, {float(mask.max()):g}]")
    fsc_masked = _dc_fix(fsc_3d(half1 * mask, half2 * mask).to(torch.float64))

    if randomize_from_angstrom is not None and randomize_from_angstrom > 0:
        rand_shell: int | None = int(box * pixel_size_angstrom / randomize_from_angstrom)
    else:
        rand_shell = randomization_shell(fsc_unmasked, randomize_at_fsc)

    if rand_shell is None or rand_shell <= 0:
        notes.append(
            f"the unmasked FSC never drops below {randomize_at_fsc}: no phase randomisation, corrected FSC = masked FSC"
        )
        rand_shell = None
        fsc_random = torch.zeros_like(fsc_masked)
        fsc_corrected = fsc_masked.clone()
    else:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        randomized = phase_randomize_3d(torch.stack([half1, half2]), rand_shell, generator)
        fsc_random = _dc_fix(fsc_3d(randomized[0] * mask, randomized[1] * mask).to(torch.float64))
        fsc_corrected = corrected_masked_fsc(fsc_masked, fsc_random, rand_shell)

    corrected_shell = int(last_shell_above_threshold(fsc_corrected, threshold))
    resolution_corrected = float(resolutions[corrected_shell])
    fsc_final, resolution, mask_used = fsc_corrected, resolution_corrected, True
    if unmasked_shell > corrected_shell:
        if force_mask:
            notes.append("the unmasked FSC extends beyond the solvent-corrected FSC (mask forced)")
        else:
            notes.append(
                "the unmasked FSC extends beyond the solvent-corrected FSC: the mask is not used for the resolution "
                "(RELION's fallback; pass force_mask=True to keep it)"
            )
            fsc_final, resolution, mask_used = fsc_unmasked, resolution_unmasked, False
    elif rand_shell is not None and float(fsc_random[corrected_shell]) > 0.1:
        notes.append(
            "the phase-randomised FSC is larger than 0.10 at the estimated resolution: use a softer mask with fewer features"
        )

    return FscResult(
        box_size=box,
        pixel_size_angstrom=float(pixel_size_angstrom),
        shell_resolution_angstrom=_numpy(resolutions),
        fsc_unmasked=_numpy(fsc_unmasked),
        fsc_masked=_numpy(fsc_masked),
        fsc_randomized_masked=_numpy(fsc_random),
        fsc_corrected=_numpy(fsc_corrected),
        fsc=_numpy(fsc_final),
        resolution_angstrom=resolution,
        resolution_unmasked_angstrom=resolution_unmasked,
        resolution_corrected_angstrom=resolution_corrected,
        randomize_from_shell=rand_shell,
        randomize_from_angstrom=None if rand_shell is None else box * pixel_size_angstrom / rand_shell,
        mask_used=mask_used,
        threshold=threshold,
        notes=tuple(notes),
    )
