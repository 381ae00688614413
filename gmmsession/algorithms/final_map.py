"""The final map: local resolution, sharpening and local filtering (``relion_postprocess`` recipes).

* :func:`local_resolution` — windowed gold-standard FSC (``relion_postprocess --locres``), see
  :mod:`gmmsession.kernels.locres`, plus :func:`summarize_by_masks` (per-patch statistics: the
  paper's point is that a global FSC can hide local gains).
* :func:`sharpen` — RELION 3.1 ``Postprocessing::sharpenMap`` on the average of the half maps:
  FSC weighting ``sqrt(2 FSC / (1 + FSC))`` per shell (zero where ``FSC <= 0`` and from the
  first shell with ``FSC < 0.0001`` on), then either

  - ``bfactor="auto"``: the Guinier fit of ``ln(mean |F| per shell)`` of the *weighted* map
    against ``1 / d^2`` over shells with ``autob_lowres >= d >= autob_highres`` and a non-zero
    amplitude (RELION: ``--autob_lowres 10 --autob_highres 0``, i.e. up to where the FSC
    weighting ends), unweighted least squares; ``B = 4 * slope`` (negative for a map whose
    amplitudes fall off, as RELION reports it) applied as ``exp(-B |k|^2 / 4)`` up to Nyquist,
    which sharpens when ``B < 0``;
  - ``bfactor=<number>``: that B-factor (RELION ``--adhoc_bfac``, negative sharpens);
  - ``amplitude_profile=...``: the shells of the average are rescaled to a given radial
    amplitude profile (as the paper does) before the FSC weighting;

  and finally a low-pass at the gold-standard resolution (RELION ``--low_pass -1``; RELION's
  own default ``--low_pass 0`` skips it, pass ``lowpass_angstrom=None`` for that).
  Amplitudes use RELION's normalisation (``|rfft| / box^3``), so the Guinier curves and
  intercept read like RELION's ``postprocess.star`` ``guinier`` table.
* :func:`local_filter` — low-pass every voxel at its local resolution by blending a stack of
  maps low-passed at consecutive Fourier shells (linear in frequency between the two shells
  around the voxel's local resolution).

The final map a user opens in ChimeraX is ``local_filter(sharpen(..., lowpass_angstrom=None).map,
local_resolution(...).resolution_map, pixel)`` (or the globally filtered ``sharpen(...).map``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from gmmsession.algorithms.postprocess import FscResult, gold_standard_fsc
from gmmsession.kernels.filters import lowpass_3d
from gmmsession.kernels.fourier import irfft_centered_3d, rfft_centered_3d, rfft_frequencies_3d
from gmmsession.kernels.fsc import shell_index_rfft, shell_sums_rfft
from gmmsession.kernels.locres import local_resolution_3d
from gmmsession.kernels.masks import MASK_INSIDE

__all__ = [
    "LocalResolutionResult",
    "SharpenResult",
    "local_resolution",
    "summarize_by_masks",
    "radial_amplitude_profile",
    "fsc_weights",
    "guinier_fit",
    "sharpen",
    "local_filter",
]


# --------------------------------------------------------------------------------------------
# Local resolution


@dataclass(frozen=True, eq=False)
class LocalResolutionResult:
    """Local resolution of two half maps.

    Attributes
    ----------
    resolution_map : (box, box, box) float32 array, Å; NaN where no window reaches and where the
        mask is 0.
    centres_angstrom : (n, 3) array of window centres ``(x, y, z)`` in Å from voxel ``box // 2``.
    resolution_angstrom : (n,) array, the resolution of each window (Å).
    fsc : (n, crop // 2 + 1) array, each window's corrected FSC on ``shell_resolution_angstrom``.
    shell_resolution_angstrom : (crop // 2 + 1,) array, ``crop * pixel / i`` (inf for shell 0).
    crop_size : side (voxels) of the window FFTs.
    pixel_size_angstrom, sampling_angstrom, radius_angstrom, edge_angstrom, randomize_at_angstrom,
    min_resolution_angstrom : the settings used (radius and edge after rounding to voxels).
    median_angstrom : median of ``resolution_map`` over voxels with ``mask >= 0.5`` (all finite
        voxels without a mask).
    """

    resolution_map: np.ndarray
    centres_angstrom: np.ndarray
    resolution_angstrom: np.ndarray
    fsc: np.ndarray
    shell_resolution_angstrom: np.ndarray
    crop_size: int
    pixel_size_angstrom: float
    sampling_angstrom: float
    radius_angstrom: float
    edge_angstrom: float
    randomize_at_angstrom: float | None
    min_resolution_angstrom: float
    median_angstrom: float

    @property
    def n_windows(self) -> int:
        return int(self.resolution_angstrom.shape[0])


def local_resolution(
    half1: torch.Tensor,
    half2: torch.Tensor,
    pixel_size_angstrom: float,
    mask: torch.Tensor | None = None,
    sampling_angstrom: float = 25.0,
    *,
    radius_angstrom: float | None = None,
    edge_angstrom: float | None = None,
    randomize_at_angstrom: float | None = 25.0,
    min_resolution_angstrom: float = 50.0,
    threshold: float = 0.143,
    crop_size: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> LocalResolutionResult:
    """Local resolution by windowed, phase-randomisation-corrected FSC (``relion_postprocess --locres``).

    Parameters
    ----------
    half1, half2 : (box, box, box) real tensors, any device (the work runs there).
    pixel_size_angstrom : float
    mask : (box, box, box) tensor in [0, 1], optional
        Windows are computed only where they reach ``mask >= 0.5``; the map is NaN where ``mask == 0``.
    sampling_angstrom : float
        Window spacing (RELION ``--locres_sampling``, 25 Å).
    radius_angstrom, edge_angstrom, randomize_at_angstrom, min_resolution_angstrom, threshold, crop_size, batch_size
        See :func:`gmmsession.kernels.locres.local_resolution_3d` (RELION defaults: radius =
        sampling / 2, edge = sampling, randomise at 25 Å, worst 50 Å, 0.143).
    seed : int
        Seed of the phase randomisation (a CPU generator: the same result on every device).

    Returns
    -------
    LocalResolutionResult
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    out = local_resolution_3d(
        half1, half2, pixel_size_angstrom, mask,
        sampling_angstrom=sampling_angstrom, radius_angstrom=radius_angstrom, edge_angstrom=edge_angstrom,
        randomize_at_angstrom=randomize_at_angstrom, min_resolution_angstrom=min_resolution_angstrom,
        threshold=threshold, crop_size=crop_size, batch_size=batch_size, generator=generator,
    )
    res_map = out.resolution_map.detach().cpu().numpy()
    if mask is not None:
        inside = (mask.detach().cpu().numpy() >= MASK_INSIDE) & np.isfinite(res_map)
    else:
        inside = np.isfinite(res_map)
    median = float(np.median(res_map[inside])) if inside.any() else math.nan
    radius_a = 0.5 * sampling_angstrom if radius_angstrom is None else radius_angstrom
    edge_a = sampling_angstrom if edge_angstrom is None else edge_angstrom
    crop = out.crop_size
    shells = np.arange(crop // 2 + 1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        shell_res = crop * pixel_size_angstrom / shells
    return LocalResolutionResult(
        resolution_map=res_map,
        centres_angstrom=out.centres_px.cpu().numpy().astype(np.float64) * pixel_size_angstrom,
        resolution_angstrom=out.resolution_angstrom.cpu().numpy(),
        fsc=out.fsc.cpu().numpy(),
        shell_resolution_angstrom=shell_res,
        crop_size=crop,
        pixel_size_angstrom=float(pixel_size_angstrom),
        sampling_angstrom=float(sampling_angstrom),
        radius_angstrom=math.floor(radius_a / pixel_size_angstrom + 0.5) * float(pixel_size_angstrom),
        edge_angstrom=math.floor(edge_a / pixel_size_angstrom + 0.5) * float(pixel_size_angstrom),
        randomize_at_angstrom=randomize_at_angstrom,
        min_resolution_angstrom=float(min_resolution_angstrom),
        median_angstrom=median,
    )


def summarize_by_masks(resolution_map: np.ndarray, masks: np.ndarray | torch.Tensor, threshold: float = MASK_INSIDE) -> pd.DataFrame:
    """Local-resolution statistics inside each of several masks (e.g. the refinement patches).

    Parameters
    ----------
    resolution_map : (box, box, box) array, Å (NaN = undefined; ignored).
    masks : (k, box, box, box) array or tensor in [0, 1]; voxels with ``mask >= threshold`` count.
    threshold : float

    Returns
    -------
    DataFrame indexed by ``patch`` (0 .. k-1) with ``n_voxels``, ``median_angstrom``,
    ``p25_angstrom``, ``p75_angstrom``, ``best_angstrom`` (5th percentile) and ``worst_angstrom``
    (95th percentile); NaN for a mask with no defined voxel.
    """
    res = np.asarray(resolution_map, dtype=np.float64)
    m = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if m.ndim == 3:
        m = m[None]
    if m.shape[1:] != res.shape:
        raise ValueError(f"masks {m.shape} must be (k, *{res.shape})")
    rows = []
    for k in range(m.shape[0]):
        values = res[(m[k] >= threshold) & np.isfinite(res)]
        if values.size:
            q = np.percentile(values, [5, 25, 50, 75, 95])
        else:
            q = np.full(5, np.nan)
        rows.append({"patch": k, "n_voxels": int(values.size), "median_angstrom": q[2], "p25_angstrom": q[1],
                     "p75_angstrom": q[3], "best_angstrom": q[0], "worst_angstrom": q[4]})
    return pd.DataFrame(rows).set_index("patch")


# --------------------------------------------------------------------------------------------
# Sharpening


@dataclass(frozen=True, eq=False)
class SharpenResult:
    """A sharpened average of two half maps and how it was made.

    Attributes
    ----------
    map : (box, box, box) float32 array, the sharpened (and low-passed) map.
    method : ``"auto_bfactor"``, ``"bfactor"``, ``"amplitude_profile"`` or ``"none"``.
    bfactor_angstrom2 : the B-factor applied (RELION's ``rlnBfactorUsedForSharpening``; negative
        sharpens), ``None`` for an amplitude profile.
    resolution_angstrom : gold-standard resolution (``fsc.resolution_angstrom``).
    lowpass_angstrom : the low-pass applied last, ``None`` when none.
    fsc_weighted : whether the ``sqrt(2 FSC / (1 + FSC))`` weighting was applied.
    guinier_x : (box // 2 + 1,) ``1 / d^2`` (1/Å^2) per shell.
    guinier_input, guinier_weighted, guinier_sharpened : ``ln(mean |F| / box^3)`` per shell of the
        average, after FSC weighting, after sharpening (before the final low-pass); NaN where the
        amplitude is 0 (RELION writes -99).
    fit_used : bool mask of the shells in the Guinier fit (auto only).
    fit_slope, fit_intercept, fit_correlation : RELION's fit values (auto only; else NaN).
    fsc : FscResult the weighting and resolution came from.
    """

    map: np.ndarray
    method: str
    bfactor_angstrom2: float | None
    resolution_angstrom: float
    lowpass_angstrom: float | None
    fsc_weighted: bool
    guinier_x: np.ndarray
    guinier_input: np.ndarray
    guinier_weighted: np.ndarray
    guinier_sharpened: np.ndarray
    fit_used: np.ndarray
    fit_slope: float
    fit_intercept: float
    fit_correlation: float
    fsc: FscResult


def _check_volume(volume: torch.Tensor, name: str) -> int:
    if volume.ndim != 3 or len(set(volume.shape)) != 1 or volume.shape[0] % 2:
        raise ValueError(f"{name} must be an even cubic (box, box, box) volume, got {tuple(volume.shape)}")
    return int(volume.shape[0])


def _shell_mean_amplitude(spectrum: torch.Tensor, box: int) -> torch.Tensor:
    """Mean ``|F| / box^3`` per shell ``0 .. box // 2`` of a centred rfft (RELION ``makeGuinierPlot``); float64."""
    idx = shell_index_rfft(box, 3, device=spectrum.device)
    amp = spectrum.abs().to(torch.float64) / float(box) ** 3
    n = box // 2 + 1
    sums = shell_sums_rfft(amp, idx, n)
    counts = shell_sums_rfft(torch.ones_like(amp), idx, n)
    return sums / counts.clamp_min(1)


def radial_amplitude_profile(volume: torch.Tensor, pixel_size_angstrom: float) -> tuple[np.ndarray, np.ndarray]:
    """Radial amplitude profile of a map, in the convention :func:`sharpen` takes.

    Parameters
    ----------
    volume : (box, box, box) real tensor (e.g. a map simulated from an atomic model).
    pixel_size_angstrom : float

    Returns
    -------
    (frequency_per_angstrom, amplitude) : two (box // 2 + 1,) float64 arrays, ``i / (box * pixel)``
    and the mean ``|F| / box^3`` over shell ``i`` (RELION's Guinier amplitude, before the log).
    """
    box = _check_volume(volume, "volume")
    amp = _shell_mean_amplitude(rfft_centered_3d(volume), box).cpu().numpy()
    return np.arange(box // 2 + 1) / (box * pixel_size_angstrom), amp


def fsc_weights(fsc: np.ndarray) -> np.ndarray:
    """RELION ``applyFscWeighting`` per shell: ``sqrt(2 F / (1 + F))``, 0 where ``F <= 0`` and
    from the first shell with ``F < 0.0001`` on.

    Parameters
    ----------
    fsc : (n_shells,) array

    Returns
    -------
    (n_shells,) float64 array.
    """
    f = np.asarray(fsc, dtype=np.float64)
    below = np.nonzero(f < 1e-4)[0]
    last = (int(below[0]) - 1) if below.size else f.shape[0] - 1  # RELION's ires_max
    w = np.where(f > 0, np.sqrt(2 * np.clip(f, 0, None) / (1 + np.clip(f, 0, None))), 0.0)
    w[np.arange(f.shape[0]) > last] = 0.0
    return w


def _shell_table(weights: np.ndarray, box: int, like: torch.Tensor) -> torch.Tensor:
    """Per-element factor on the rfft grid: ``weights[i]`` on shell ``i``, 0 beyond the last given shell."""
    idx = shell_index_rfft(box, 3, device=like.device)
    table = torch.zeros(box // 2 + 2, dtype=like.real.dtype, device=like.device)
    table[: len(weights)] = torch.as_tensor(weights, dtype=like.real.dtype, device=like.device)
    return table[idx]


def _apply_shell_weights(volume: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
    """Multiply every rfft element of shell ``i`` of a real volume by ``weights[i]``; zero beyond the last shell."""
    box = int(volume.shape[-1])
    spectrum = rfft_centered_3d(volume)
    return irfft_centered_3d(spectrum * _shell_table(weights, box, spectrum), box)


def _bfactor_envelope(box: int, pixel_size_angstrom: float, bfactor_angstrom2: float, like: torch.Tensor) -> torch.Tensor:
    """``exp(-B |k|^2 / 4)`` up to Nyquist, 0 beyond, on the rfft grid (RELION ``applyBFactorToMap``,
    the same factor as :func:`gmmsession.kernels.filters.apply_bfactor_3d`)."""
    k2 = rfft_frequencies_3d(box, pixel_size_angstrom, device=like.device, dtype=torch.float64).square().sum(-1)
    inside = k2 <= (1.0 / (2.0 * pixel_size_angstrom)) ** 2
    env = torch.where(inside, torch.exp(-(bfactor_angstrom2 / 4.0) * k2), torch.zeros_like(k2))
    return env.to(like.real.dtype)


def guinier_fit(
    x: np.ndarray, y: np.ndarray, shell_resolution_angstrom: np.ndarray, lowres_angstrom: float = 10.0, highres_angstrom: float = 0.0
) -> tuple[float, float, float, np.ndarray]:
    """RELION's straight-line fit of a Guinier plot (``fitStraightLine``).

    Shells with ``lowres >= d >= highres`` and a finite ``y`` (non-zero amplitude) are used with
    equal weights. Returns ``(slope, intercept, correlation, used)`` where ``correlation`` is
    RELION's ``ss_xy^2 / (ss_xx ss_yy)``; all 0 when fewer than two distinct ``x`` are used.
    """
    d = np.asarray(shell_resolution_angstrom, dtype=np.float64)
    used = np.isfinite(y) & (d <= lowres_angstrom) & (d >= highres_angstrom)
    xs, ys = np.asarray(x)[used], np.asarray(y)[used]
    if xs.size < 2:
        return 0.0, 0.0, 0.0, used
    ss_xx = np.sum((xs - xs.mean()) ** 2)
    ss_yy = np.sum((ys - ys.mean()) ** 2)
    ss_xy = np.sum((xs - xs.mean()) * (ys - ys.mean()))
    if ss_xx <= 0:
        return 0.0, 0.0, 0.0, used
    slope = ss_xy / ss_xx
    corr = ss_xy**2 / (ss_xx * ss_yy) if ss_yy > 0 else 0.0
    return float(slope), float(ys.mean() - slope * xs.mean()), float(corr), used


def _log_amplitude(spectrum: torch.Tensor, box: int) -> np.ndarray:
    amp = _shell_mean_amplitude(spectrum, box).cpu().numpy()
    return np.where(amp > 0, np.log(np.where(amp > 0, amp, 1.0)), np.nan)


def sharpen(
    half1: torch.Tensor,
    half2: torch.Tensor,
    pixel_size_angstrom: float,
    mask: torch.Tensor | None = None,
    *,
    bfactor: float | str | None = "auto",
    amplitude_profile: tuple[np.ndarray, np.ndarray] | np.ndarray | None = None,
    autob_lowres_angstrom: float = 10.0,
    autob_highres_angstrom: float = 0.0,
    fsc_weighting: bool = True,
    lowpass_angstrom: float | str | None = "resolution",
    filter_edge_width_shells: int = 2,
    fsc: FscResult | None = None,
    seed: int = 0,
) -> SharpenResult:
    """Sharpen the average of two half maps like ``relion_postprocess`` (or to an amplitude profile).

    Parameters
    ----------
    half1, half2 : (box, box, box) real tensors (even box), any device.
    pixel_size_angstrom : float
    mask : (box, box, box) tensor, optional
        Solvent mask for the gold-standard FSC (ignored when ``fsc`` is given). The sharpened map
        itself is not masked (RELION's ``postprocess.mrc``; multiply by the mask for ``_masked``).
    bfactor : "auto", float or None
        ``"auto"``: Guinier fit (RELION ``--auto_bfac``); a number: that B-factor (Å^2, negative
        sharpens; RELION ``--adhoc_bfac``); ``None``: no B-factor.
    amplitude_profile : (frequency_per_angstrom, amplitude) arrays, or one (box // 2 + 1,) array
        of amplitudes per shell; optional. When given, ``bfactor`` is ignored and every shell of the
        average is scaled so its mean ``|F| / box^3`` equals the profile (linearly interpolated in
        frequency; shells beyond the profile's last frequency keep that shell's factor). Take it
        from a reference map with :func:`radial_amplitude_profile`.
    autob_lowres_angstrom, autob_highres_angstrom : float
        Guinier fit range (RELION ``--autob_lowres 10``, ``--autob_highres 0``).
    fsc_weighting : bool
        Apply ``sqrt(2 FSC / (1 + FSC))`` (RELION; ``--skip_fsc_weighting`` is False).
    lowpass_angstrom : "resolution", float or None
        Final low-pass (RELION ``lowPassFilterMap``, raised-cosine edge of
        ``filter_edge_width_shells``): at the gold-standard resolution (RELION ``--low_pass -1``),
        at a given resolution, or none (RELION's default ``--low_pass 0``).
    fsc : FscResult, optional
        A gold-standard FSC already computed from these half maps.
    seed : int
        Seed of the FSC's phase randomisation.

    Returns
    -------
    SharpenResult
    """
    box = _check_volume(half1, "half1")
    if half2.shape != half1.shape:
        raise ValueError(f"half1 {tuple(half1.shape)} and half2 {tuple(half2.shape)} differ")
    if fsc is None:
        fsc = gold_standard_fsc(half1, half2, pixel_size_angstrom, mask, seed=seed)
    if fsc.box_size != box:
        raise ValueError(f"fsc is for box {fsc.box_size}, the half maps are box {box}")
    average = 0.5 * (half1 + half2.to(half1.device, half1.dtype))
    shells = np.arange(box // 2 + 1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        shell_res = box * pixel_size_angstrom / shells
    guinier_x = (shells / (box * pixel_size_angstrom)) ** 2
    # All steps on the spectrum, as RELION: shells zeroed by the weighting stay exactly zero.
    spectrum = rfft_centered_3d(average)
    guinier_input = _log_amplitude(spectrum, box)

    method = "none"
    if amplitude_profile is not None:
        method = "amplitude_profile"
        target = _profile_on_shells(amplitude_profile, box, pixel_size_angstrom)
        current = np.exp(np.nan_to_num(guinier_input, nan=-np.inf))
        scale = np.where(current > 0, target / np.where(current > 0, current, 1.0), 0.0)
        spectrum = spectrum * _shell_table(scale, box, spectrum)

    if fsc_weighting:
        spectrum = spectrum * _shell_table(fsc_weights(fsc.fsc), box, spectrum)
    guinier_weighted = _log_amplitude(spectrum, box)

    slope = intercept = corr = math.nan
    used = np.zeros(box // 2 + 1, dtype=bool)
    b_value: float | None = None
    if method != "amplitude_profile":
        if isinstance(bfactor, str):
            if bfactor != "auto":
                raise ValueError(f"bfactor must be 'auto', a number or None, got {bfactor!r}")
            slope, intercept, corr, used = guinier_fit(guinier_x, guinier_weighted, shell_res, autob_lowres_angstrom, autob_highres_angstrom)
            b_value, method = 4.0 * slope, "auto_bfactor"
        elif bfactor is not None:
            b_value, method = float(bfactor), "bfactor"
    if b_value is not None and b_value != 0:
        spectrum = spectrum * _bfactor_envelope(box, pixel_size_angstrom, b_value, spectrum)
    guinier_sharpened = _log_amplitude(spectrum, box)
    sharpened = irfft_centered_3d(spectrum, box)

    applied: float | None = None
    if isinstance(lowpass_angstrom, str):
        if lowpass_angstrom != "resolution":
            raise ValueError(f"lowpass_angstrom must be 'resolution', a number or None, got {lowpass_angstrom!r}")
        applied = float(fsc.resolution_angstrom)
    elif lowpass_angstrom is not None:
        applied = float(lowpass_angstrom)
    final = sharpened
    if applied is not None and math.isfinite(applied):
        final = lowpass_3d(sharpened, pixel_size_angstrom, applied, filter_edge_width_shells)
    elif applied is not None:
        applied = None
    return SharpenResult(
        map=final.detach().to("cpu", torch.float32).numpy(),
        method=method,
        bfactor_angstrom2=b_value,
        resolution_angstrom=float(fsc.resolution_angstrom),
        lowpass_angstrom=applied,
        fsc_weighted=fsc_weighting,
        guinier_x=guinier_x,
        guinier_input=guinier_input,
        guinier_weighted=guinier_weighted,
        guinier_sharpened=guinier_sharpened,
        fit_used=used,
        fit_slope=slope,
        fit_intercept=intercept,
        fit_correlation=corr,
        fsc=fsc,
    )


def _profile_on_shells(profile: tuple[np.ndarray, np.ndarray] | np.ndarray, box: int, pixel_size_angstrom: float) -> np.ndarray:
    n = box // 2 + 1
    if isinstance(profile, tuple):
        freq, amp = (np.asarray(a, dtype=np.float64) for a in profile)
        if freq.shape != amp.shape or freq.ndim != 1 or freq.size < 2 or np.any(np.diff(freq) <= 0):
            raise ValueError("amplitude_profile must be (frequency, amplitude) 1D arrays of one length with increasing frequencies")
        return np.interp(np.arange(n) / (box * pixel_size_angstrom), freq, amp)
    amp = np.asarray(profile, dtype=np.float64)
    if amp.shape != (n,):
        raise ValueError(f"an amplitude_profile array must have box // 2 + 1 = {n} values, got shape {amp.shape}")
    return amp


# --------------------------------------------------------------------------------------------
# Local filtering


def local_filter(
    volume: torch.Tensor,
    resolution_map: torch.Tensor | np.ndarray,
    pixel_size_angstrom: float,
    *,
    edge_width_shells: int = 2,
) -> torch.Tensor:
    """Low-pass every voxel at its local resolution (a blend of a stack of low-passed maps).

    With ``s = box * pixel / res`` the voxel's local resolution in (fractional) Fourier shells,
    the output is ``(1 - t) L_floor(s) + t L_floor(s)+1`` with ``t = s - floor(s)`` and ``L_i``
    the map low-passed at shell ``i`` (:func:`gmmsession.kernels.filters.lowpass_3d`, which
    rounds to whole shells anyway): linear in frequency between the two nearest shells. One
    filtered map per shell between the best and worst local resolution is made and accumulated
    at once, so memory stays at three maps. Voxels with a NaN (undefined) resolution get the
    worst local resolution's map.

    Parameters
    ----------
    volume : (box, box, box) real tensor (e.g. ``sharpen(..., lowpass_angstrom=None).map``).
    resolution_map : (box, box, box) local resolution, Å (NaN = undefined).
    pixel_size_angstrom : float
    edge_width_shells : int
        Raised-cosine edge of each low-pass (RELION's ``--filter_edge_width``, 2).

    Returns
    -------
    (box, box, box) tensor on ``volume``'s device.
    """
    box = _check_volume(volume, "volume")
    res = torch.as_tensor(resolution_map, device=volume.device).to(torch.float64)
    if res.shape != volume.shape:
        raise ValueError(f"resolution_map {tuple(res.shape)} and volume {tuple(volume.shape)} differ")
    finite = torch.isfinite(res) & (res > 0)
    if not bool(finite.any()):
        raise ValueError("resolution_map has no finite positive value")
    nyquist_shell = box // 2
    shell = (box * pixel_size_angstrom / torch.where(finite, res, torch.ones_like(res))).clamp(1.0, float(nyquist_shell))
    worst = float(shell[finite].min())
    shell = torch.where(finite, shell, torch.full_like(shell, worst))
    low, high = int(math.floor(float(shell.min()))), int(math.ceil(float(shell.max())))
    out = torch.zeros_like(volume)
    for i in range(low, high + 1):
        weight = (1.0 - (shell - i).abs()).clamp(min=0.0)
        if not bool((weight > 0).any()):
            continue
        filtered = lowpass_3d(volume, pixel_size_angstrom, box * pixel_size_angstrom / i, edge_width_shells)
        out += weight.to(volume.dtype) * filtered
    return out
