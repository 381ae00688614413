"""Gold-standard global refinement against GMM references (the paper's "global particle
orientation refinement").

Each iteration, for each half set separately: re-fit that half's GMM to its own half map
(low-passed to the current gold-standard resolution, warm-started from the previous GMM),
align that half's particles to it, and back-project them at their new poses. Aligning and
inserting happen chunk by chunk on the same images (one read of the stack per iteration):
a chunk is particles + references in, poses, scores and summable Fourier accumulators out.
Then the gold-standard FSC of the new half maps measures the iteration.

Nothing here mixes the halves: a particle of half ``h`` only ever meets ``gmm[h]``, and half
map ``h`` only ever receives particles of half ``h``.

Focused refinement (paper: "Focused refinement") is the same loop with a focus mask ``M``:
after each GMM fit, the reference the particles are aligned to has its widths changed to
``sigma / (0.25 + 0.75 M(centre))`` (:func:`~gmmsession.kernels.masks.width_masked_sigmas`), with
each Gaussian's integrated density kept (:func:`focused_reference`), so Gaussians outside the
mask are blurred and the alignment follows the masked region; the fitted
GMM itself stays unchanged (it warm-starts the next fit). The FSC is then measured twice, over
the whole map (solvent mask) and within the focus mask; the focus FSC sets the target
resolution and decides whether an iteration improved.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from gmmsession.algorithms.align import AlignConfig, PoseUpdate, refine_poses_per_pixel_size
from gmmsession.algorithms.gmm_build import GmmBuildConfig, build_gmm
from gmmsession.algorithms.postprocess import FscResult, gold_standard_fsc
from gmmsession.algorithms.reconstruct import ReconstructConfig, accumulate_chunk, finalise_half_maps
from gmmsession.data.bridge import ParticleTensors, particle_tensors
from gmmsession.data.chunks import iter_particle_chunks
from gmmsession.data.gmm import GmmTensors
from gmmsession.kernels.filters import lowpass_3d
from gmmsession.kernels.masks import sample_volume_at, width_masked_sigmas
from gmmsession.kernels.rotations import geodesic_angle_deg

__all__ = ["GlobalRefineConfig", "IterationResult", "refine_global", "fsc_quality", "focused_reference"]


@dataclass(frozen=True)
class GlobalRefineConfig:
    """Settings of :func:`refine_global`.

    Attributes
    ----------
    n_iter : iterations at most (paper: 5).
    align : per-particle pose refinement settings (its ``max_resolution_angstrom``, if None,
        follows the current gold-standard resolution each iteration).
    gmm : GMM re-fit settings (warm-started each iteration, so fewer steps than a first build).
    reconstruct : half-map reconstruction settings.
    chunk_size : particles read per chunk.
    patience : stop after this many iterations in a row without FSC improvement.
    resolution_angstrom : fixed target resolution (low-pass, GMM fit, scoring band); None: the
        current gold-standard resolution, re-measured every iteration. That scalar is the only
        thing the two halves share (as in RELION, where the FSC sets the filter for both).
    device : compute device (None: CUDA if present, else CPU).
    focus_keep_mass : with a focus mask, widened Gaussians keep their integrated density
        (:func:`focused_reference`); False keeps their peak amplitudes.
    """

    n_iter: int = 5
    align: AlignConfig = field(default_factory=AlignConfig)
    gmm: GmmBuildConfig = field(default_factory=lambda: GmmBuildConfig(n_iter=60))
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)
    chunk_size: int = 1000
    patience: int = 1
    resolution_angstrom: float | None = None
    device: str | None = None
    focus_keep_mass: bool = True


@dataclass(frozen=True)
class IterationResult:
    """One finished iteration (all tensors on the CPU).

    ``poses`` are the new poses of every particle (``particle`` order) with their scores
    after / before alignment and the angle / shift changes relative to the iteration's start
    (a :class:`~gmmsession.algorithms.align.PoseUpdate`); ``half_maps`` (2, box, box, box);
    ``gmm`` the fitted references (before any focus widening); ``fsc`` the gold-standard FSC of
    the new half maps (with the solvent mask); ``fsc_focus`` the FSC within the focus mask
    (None without one); ``quality`` the :func:`fsc_quality` of ``fsc_focus`` when focusing,
    else of ``fsc``; ``gmm_fit_fsc`` ``{half: FSC per shell 0 .. max_shell}`` between each
    half's fitted GMM and the low-passed half map it was fitted to (shells as ``fsc``'s).
    """

    iteration: int
    poses: PoseUpdate
    half_maps: torch.Tensor
    gmm: dict[int, GmmTensors]
    fsc: FscResult
    quality: float
    improved: bool
    seconds: float
    fsc_focus: FscResult | None = None
    gmm_fit_fsc: dict[int, np.ndarray] | None = None


def fsc_quality(fsc: FscResult) -> float:
    """A continuous measure of an FSC curve: the sum of the curve the resolution is read from,
    over shells 1 .. Nyquist (the 0.143 shell alone moves in whole shells)."""
    return float(np.sum(np.clip(fsc.fsc[1:], -1.0, 1.0)))


def focused_reference(
    gmm: GmmTensors, focus_mask: torch.Tensor | None, pixel_size_angstrom: float, keep_mass: bool = True
) -> GmmTensors:
    """The alignment reference for a focus mask: widths ``sigma / (0.25 + 0.75 M(centre))``.

    ``focus_mask`` is a (box, box, box) volume in [0, 1] on the map grid; None returns ``gmm``.

    ``keep_mass`` (default): each widened Gaussian keeps its integrated density (its peak
    amplitude times ``(sigma / sigma')^3``), so the region outside the mask is the same density
    at a lower resolution, a low-pass filter of it. ``keep_mass=False`` keeps the peak
    amplitudes (the paper's rule read literally): since our amplitudes are 3D peaks, a Gaussian
    4 times wider then carries 64 times its mass, and the rest of the particle becomes a blob
    that dominates the low rings of the score. On the simulator's hinge (box 96, 1 Å/px, SNR
    0.2, hinge +-20 degrees, reference from the true poses) the moving domain's poses then
    wander away from the domain's true pose (mean error 10.5 -> 12.2 -> 13.5 degrees over two
    passes), while with ``keep_mass`` they move towards it (10.5 -> 7.1 -> 6.2 degrees).
    """
    if focus_mask is None:
        return gmm
    m = sample_volume_at(focus_mask.to(gmm.positions_angstrom), gmm.positions_angstrom, pixel_size_angstrom)
    widths = width_masked_sigmas(gmm.widths_angstrom, m)
    amplitudes = gmm.amplitudes * (gmm.widths_angstrom / widths) ** 3 if keep_mass else gmm.amplitudes
    return GmmTensors(gmm.positions_angstrom, amplitudes, widths)


def refine_global(
    particles: xr.Dataset,
    optics: xr.Dataset,
    half_maps: torch.Tensor,
    gmm: dict[int, GmmTensors],
    pixel_size_angstrom: float,
    config: GlobalRefineConfig = GlobalRefineConfig(),
    mask: torch.Tensor | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    focus_mask: torch.Tensor | None = None,
) -> Iterator[IterationResult]:
    """Run the refinement, yielding each finished iteration.

    Parameters
    ----------
    particles, optics : the particle set (poses of ``particles`` are the start).
    half_maps : (2, box, box, box) current half maps (half 1, half 2).
    gmm : {1: GmmTensors, 2: GmmTensors} current references, one per half.
    pixel_size_angstrom : pixel size of the maps (Å); each particle is aligned and inserted at its own
        (``rlnImagePixelSize`` of its optics group; all groups share one box).
    config : GlobalRefineConfig
    mask : (box, box, box) solvent mask for the gold-standard FSC, or None.
    progress : ``progress(stage, done, total)`` with stage ``"align"`` (particles) per chunk.
    focus_mask : (box, box, box) focus mask in [0, 1] for focused refinement, or None (module
        docstring).

    Yields
    ------
    IterationResult per iteration, stopping early after ``config.patience`` iterations without
    improvement of :func:`fsc_quality`. The caller keeps whichever iteration it wants (the
    session keeps the best), so interrupting between iterations loses nothing finished.
    """
    if half_maps.ndim != 4 or half_maps.shape[0] != 2:
        raise ValueError(f"half_maps must have shape (2, box, box, box), got {tuple(half_maps.shape)}")
    if set(gmm) != {1, 2}:
        raise ValueError(f"gmm must hold one reference per half set (keys 1 and 2), got {sorted(gmm)}")
    device = torch.device(config.device) if config.device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    box = int(half_maps.shape[-1])
    n = int(particles.sizes["particle"])
    start = particle_tensors(particles, optics, dtype=torch.float32)
    rotation, origin = start.rotation.clone(), start.origin_angstrom.clone()
    maps = half_maps.detach().to("cpu", torch.float32)
    refs = {h: g.detach().to("cpu") for h, g in gmm.items()}
    if focus_mask is not None and focus_mask.shape != maps.shape[1:]:
        raise ValueError(f"focus_mask has shape {tuple(focus_mask.shape)}, the half maps {tuple(maps.shape[1:])}")
    focus = None if focus_mask is None else focus_mask.detach().to("cpu", torch.float32)
    fsc, fsc_focus = _measure(maps, pixel_size_angstrom, mask, focus)
    best = fsc_quality(fsc_focus or fsc)
    stale = 0
    for it in range(1, config.n_iter + 1):
        t0 = time.perf_counter()
        resolution = float(config.resolution_angstrom or (fsc_focus or fsc).resolution_angstrom)
        # 1. Each half's reference from its own map only, low-passed to the measured resolution.
        gmm_fit_fsc: dict[int, np.ndarray] = {}
        for h in (1, 2):
            target = lowpass_3d(maps[h - 1], pixel_size_angstrom, resolution)
            fitted, fit_report = build_gmm(target, pixel_size_angstrom, resolution, initial=refs[h], device=device, config=config.gmm)
            refs[h] = fitted.detach().to("cpu")
            gmm_fit_fsc[h] = np.asarray(fit_report.fsc)
        align_refs = {h: focused_reference(refs[h], focus, pixel_size_angstrom, config.focus_keep_mass) for h in (1, 2)}
        align_cfg = config.align
        if align_cfg.max_resolution_angstrom is None:
            align_cfg = dataclasses.replace(align_cfg, max_resolution_angstrom=resolution)
        # 2. Align and insert, chunk by chunk, each particle against its own half's reference.
        new_rot, new_origin = rotation.clone(), origin.clone()
        score = torch.zeros(n)
        initial = torch.zeros(n)
        accumulators: dict = {}
        done = 0
        for chunk in iter_particle_chunks(particles, optics, chunk_size=config.chunk_size, device=device):
            pos = torch.as_tensor(chunk.positions)
            params = dataclasses.replace(
                chunk.params, rotation=rotation[pos].to(device), origin_angstrom=origin[pos].to(device)
            )
            params = _aligned(chunk.images, params, chunk.halves, align_refs, align_cfg, device, score, initial, pos)
            new_rot[pos] = params.rotation.cpu()
            new_origin[pos] = params.origin_angstrom.cpu()
            accumulate_chunk(chunk.images, params, chunk.halves, box, pixel_size_angstrom, config.reconstruct, accumulators)
            done += len(pos)
            if progress is not None:
                progress("align", done, n)
        maps = torch.stack([m.to("cpu", torch.float32) for m in finalise_half_maps(accumulators, box, pixel_size_angstrom, config.reconstruct)])
        fsc, fsc_focus = _measure(maps, pixel_size_angstrom, mask, focus)
        quality = fsc_quality(fsc_focus or fsc)
        improved = quality > best
        result = IterationResult(
            iteration=it,
            poses=PoseUpdate(
                rotation=new_rot,
                origin_angstrom=new_origin,
                score=score,
                initial_score=initial,
                angle_change_deg=geodesic_angle_deg(rotation.double(), new_rot.double()).float(),
                shift_change_angstrom=(new_origin - origin).norm(dim=-1),
                positions=np.arange(n),
            ),
            half_maps=maps,
            gmm=dict(refs),
            fsc=fsc,
            quality=quality,
            improved=improved,
            seconds=time.perf_counter() - t0,
            fsc_focus=fsc_focus,
            gmm_fit_fsc=gmm_fit_fsc,
        )
        yield result
        rotation, origin = new_rot, new_origin
        if improved:
            best, stale = quality, 0
        else:
            stale += 1
            if stale >= config.patience:
                return


def _measure(
    maps: torch.Tensor, pixel_size_angstrom: float, mask: torch.Tensor | None, focus: torch.Tensor | None
) -> tuple[FscResult, FscResult | None]:
    """Gold-standard FSC with the solvent mask, and within the focus mask when there is one."""
    fsc = gold_standard_fsc(maps[0], maps[1], pixel_size_angstrom, mask=mask)
    return fsc, None if focus is None else gold_standard_fsc(maps[0], maps[1], pixel_size_angstrom, mask=focus)


def _aligned(
    images: torch.Tensor,
    params: ParticleTensors,
    halves: torch.Tensor,
    refs: dict[int, GmmTensors],
    config: AlignConfig,
    device: torch.device,
    score_out: torch.Tensor,
    initial_out: torch.Tensor,
    positions: torch.Tensor,
) -> ParticleTensors:
    """``params`` with the rotations and origins refined, each half against its own reference
    (each particle on its own pixel grid: optics groups may differ in pixel size)."""
    rotation = params.rotation.clone()
    origin = params.origin_angstrom.clone()
    for h in (1, 2):
        sel = torch.nonzero(halves == h).squeeze(-1)
        if sel.numel() == 0:
            continue
        sub = params.select(sel)
        g = refs[h].to(device)
        upd = refine_poses_per_pixel_size(images[sel], sub, g.positions_angstrom, g.amplitudes, g.widths_angstrom, config)
        rotation[sel] = upd.rotation.to(rotation.dtype)
        origin[sel] = upd.origin_angstrom.to(origin.dtype)
        score_out[positions[sel.cpu()]] = upd.score.detach().cpu().float()
        initial_out[positions[sel.cpu()]] = upd.initial_score.detach().cpu().float()
    return dataclasses.replace(params, rotation=rotation, origin_angstrom=origin)
