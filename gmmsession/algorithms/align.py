"""Per-particle pose refinement against a Gaussian-mixture reference (paper: "Global particle
orientation refinement").

For every particle, a few Adam steps on a rotation update and an in-plane shift maximise the
band-averaged FRC (:func:`gmmsession.kernels.scoring.frc_band_score`) between the particle
image and the analytic projection of the GMM
(:func:`gmmsession.kernels.gmm.project_gaussians_rfft_2d`).

Parameterisation
----------------
The pose is ``R = exp([delta]) @ R0`` and ``shift = shift0 + u * length_scale``, where ``R0``
and ``shift0 = -origin`` are the starting pose, ``delta`` (3,) is a rotation vector in
radians **in the image frame** (left multiplication: ``delta_z`` turns the projection in
plane, ``delta_x`` / ``delta_y`` tilt the map about the image axes) and ``u`` (2,) is the shift
change in units of the reference's radius of gyration ``length_scale`` (Å). Left
multiplication makes each component mean the same thing for every particle (a rotation about
the current pose, independent of its Euler angles, no gimbal singularity at ``delta = 0``),
so Adam's per-component step sizes are comparable across particles. In these units a step of
``lr`` moves a point at the reference's radius of gyration by about ``lr * length_scale`` Å
through either a rotation or a shift, so one learning rate (radians) serves both.

Schedule: Adam (``betas = (0.5, 0.9)``: short memory, since only 10 steps are taken) with the
learning rate cosine-annealed from ``learning_rate`` to ``learning_rate * final_lr_fraction``
over ``n_steps``. The paper's ``1e-3`` is in its own units (TensorFlow on Euler angles in its
internal scale); here the default ``0.02`` rad (1.1 degrees for the first step, annealed to a
tenth) was chosen so that a 3 degree / 1 pixel error is corrected in the paper's 10 steps.

Do no harm: the score is evaluated at every iterate (and at the start) and the best-scoring
pose is returned, so the score never decreases. Optional trust regions (``max_angle_deg``,
``max_shift_angstrom``) project every iterate back into a ball around the start.

Particles are independent: a batch is optimised jointly by summing the per-particle losses;
the gradient of particle ``i``'s parameters only involves its own loss and Adam acts
element-wise, so results do not depend on the batch size beyond float rounding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from gmmsession.data.bridge import ParticleTensors
from gmmsession.data.chunks import ParticleChunk
from gmmsession.kernels.conventions import image_shift_angstrom_from_origin, origin_angstrom_from_image_shift
from gmmsession.kernels.fourier import rfft_centered_2d, rfft_frequencies_2d
from gmmsession.kernels.fsc import shell_index_rfft
from gmmsession.kernels.gmm import fourier_crop_box_size, project_gaussians_rfft_2d
from gmmsession.kernels.rotations import geodesic_angle_deg, rotvec_to_matrix
from gmmsession.kernels.scoring import band_scorer, crop_rfft_2d, phase_flipped_spectra, ring_band_weights

__all__ = [
    "AlignConfig",
    "PoseUpdate",
    "ScoringGrid",
    "scoring_grid",
    "prepare_batch",
    "refine_poses_chunk",
    "pixel_size_groups",
    "refine_poses_per_pixel_size",
    "refine_poses",
    "concat_pose_updates",
]

SCORINGS = ("frc", "ctf_exact")
# Particles per Adam batch when AlignConfig.batch_size is None (see its docstring).
_DEFAULT_BATCH = {"cpu": 16, "cuda": 256}
BAND_AVERAGES = ("ring", "pooled")


@dataclass(frozen=True)
class AlignConfig:
    """Settings of the per-particle pose refinement.

    Attributes
    ----------
    n_steps : int
        Adam steps per particle (paper: 10).
    learning_rate : float
        Initial Adam step in radians for the rotation update, and in units of the reference's
        radius of gyration for the shift (module docstring). Annealed by a cosine to
        ``learning_rate * final_lr_fraction``.
    final_lr_fraction : float
        Learning rate at the last step relative to the first (1.0: constant).
    batch_size : int or None
        Particles optimised together. Results do not depend on it. None: 16 on the CPU (the
        paper's default), 256 on CUDA (measured at the paper's GPCR scale on an H100 with the
        defaults: 2,045 particles/s at 64 and 2,385 at 256; peak memory 1.9 and 4.3 GiB).
    max_resolution_angstrom : float or None
        Finest resolution scored (Å). Images are Fourier-cropped and projections computed only
        up to it, so the cost follows this, not the box. None: Nyquist, no crop.
    min_resolution_angstrom : float or None
        Coarsest resolution scored (Å); None: from ring 1.
    scoring : ``"frc"`` or ``"ctf_exact"``
        ``"frc"``: the paper's: images phase-flipped once, FRC against the plain projection.
        ``"ctf_exact"``: the projection multiplied by each particle's CTF, against the raw image.
    band_average : ``"ring"`` or ``"pooled"``
        ``"ring"``: the paper's mean of per-ring FRCs (:func:`~gmmsession.kernels.scoring.frc_band_score`).
        ``"pooled"``: one correlation over all scored rings
        (:func:`~gmmsession.kernels.scoring.pooled_band_correlation`), which weights rings by
        their signal; with ``scoring="ctf_exact"`` it is the white-noise least-squares fit.

        The defaults are ``scoring="ctf_exact"``, ``band_average="pooled"``: on the simulator
        they pin poses better than the paper's ``"frc"`` + ``"ring"`` in every case measured
        (perfect reference, SNR 0.2: 0.92 vs 1.12 degrees; global refinement of 5,000
        particles from 3 degrees: 0.96 vs 1.26; SNR 0.05 from 2 degrees: 1.83 vs 2.03; see
        ``benchmarks/compare_scoring.py`` and ``benchmarks/bench_refine_global.py``). Pass
        ``scoring="frc", band_average="ring"`` for the paper's scoring.
    max_angle_deg : float or None
        Trust region: iterates are kept within this rotation angle of the start.
    max_shift_angstrom : float or None
        Trust region on the shift change (Å).
    length_scale_angstrom : float or None
        Unit of the shift parameter (Å); None: the GMM's amplitude-weighted radius of gyration.
    device : str or None
        Where to compute; None: the device of the images.
    tf32 : bool
        On CUDA, let the projection's matrix products use TF32 tensor cores (10-bit mantissa);
        no effect on the CPU. On by default: on an H200 it made the GPCR-scale kernel 1.3x
        faster (1,705 vs 1,305 particles/s at batch 256) and global refinement of 5,000
        simulated particles ended at the same accuracy (0.92 vs 0.91 degrees median error,
        3.00 Å both).
    cuda_graphs : bool
        On CUDA, capture a batch's whole Adam loop in one CUDA graph and replay it for the
        following batches (chunks of at least three batches), so the GPU does not wait for
        the CPU to launch a few thousand small kernels per batch. Same kernels, same results.
        On an H100 at the GPCR scale, batch 64: 2,045 vs 1,235 particles/s; box 128 with
        2,000 Gaussians at 4 Å, batch 64: 5,633 vs 1,274 (``benchmarks/device_issue3.sh``).
    """

    n_steps: int = 10
    learning_rate: float = 0.02
    final_lr_fraction: float = 0.1
    batch_size: int | None = None
    max_resolution_angstrom: float | None = None
    min_resolution_angstrom: float | None = 40.0
    scoring: str = "ctf_exact"
    band_average: str = "pooled"
    max_angle_deg: float | None = None
    max_shift_angstrom: float | None = None
    length_scale_angstrom: float | None = None
    adam_betas: tuple[float, float] = (0.5, 0.9)
    device: str | None = None
    tf32: bool = True
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.band_average not in BAND_AVERAGES:
            raise ValueError(f"band_average must be one of {BAND_AVERAGES}, got {self.band_average!r}")
        if self.n_steps < 0 or (self.batch_size is not None and self.batch_size < 1):
            raise ValueError(f"need n_steps >= 0 and batch_size >= 1, got {self.n_steps}, {self.batch_size}")
        if not self.learning_rate > 0 or not 0 < self.final_lr_fraction <= 1:
            raise ValueError(
                f"need learning_rate > 0 and 0 < final_lr_fraction <= 1, got {self.learning_rate}, {self.final_lr_fraction}"
            )


@dataclass(frozen=True)
class PoseUpdate:
    """Refined poses of ``n`` particles (tensors on the compute device unless concatenated).

    Attributes
    ----------
    rotation : (n, 3, 3) new RELION rotation matrices (map -> image).
    origin_angstrom : (n, 2) new ``rlnOriginX/YAngst`` (Å).
    score : (n,) band FRC at the returned pose (>= ``initial_score``).
    initial_score : (n,) band FRC at the starting pose.
    angle_change_deg : (n,) rotation angle between the starting and the returned pose.
    shift_change_angstrom : (n,) length of the origin change (Å).
    positions : (n,) positions along ``particle`` (set by :func:`refine_poses`), or None.
    """

    rotation: torch.Tensor
    origin_angstrom: torch.Tensor
    score: torch.Tensor
    initial_score: torch.Tensor
    angle_change_deg: torch.Tensor
    shift_change_angstrom: torch.Tensor
    positions: np.ndarray | None = None

    @property
    def n_particles(self) -> int:
        return int(self.score.shape[0])


def _radius_of_gyration(positions: torch.Tensor, amplitudes: torch.Tensor, sigmas: torch.Tensor) -> float:
    """Mass-weighted radius of gyration (Å) of the Gaussian centres about their centroid."""
    mass = (amplitudes * sigmas**3).abs().double()
    pos = positions.double()
    if float(mass.sum()) <= 0:
        mass = torch.ones_like(mass)
    centre = (mass[:, None] * pos).sum(0) / mass.sum()
    rg = math.sqrt(float((mass * ((pos - centre) ** 2).sum(-1)).sum() / mass.sum()))
    return max(rg, 1.0)


def _check_inputs(images: torch.Tensor, params: ParticleTensors, pos: torch.Tensor, amp: torch.Tensor, sig: torch.Tensor) -> None:
    if images.ndim != 3 or images.shape[-1] != images.shape[-2] or images.shape[-1] % 2:
        raise ValueError(f"images must have shape (n, box, box) with even box, got {tuple(images.shape)}")
    n = images.shape[0]
    if params.rotation.shape != (n, 3, 3) or params.origin_angstrom.shape != (n, 2):
        raise ValueError(
            f"params must hold {n} poses: rotation {tuple(params.rotation.shape)}, origin {tuple(params.origin_angstrom.shape)}"
        )
    if pos.ndim != 2 or pos.shape[-1] != 3 or amp.shape != pos.shape[:1] or sig.shape != pos.shape[:1]:
        raise ValueError(
            f"GMM must be positions (G, 3), amplitudes (G,), sigmas (G,); got {tuple(pos.shape)}, {tuple(amp.shape)}, {tuple(sig.shape)}"
        )


def _project_to_ball(x: torch.Tensor, radius: float | None) -> torch.Tensor:
    """Scale rows of ``x`` (n, d) longer than ``radius`` back onto the ball."""
    if radius is None:
        return x
    norm = x.norm(dim=-1, keepdim=True)
    return x * torch.clamp(radius / norm.clamp_min(1e-30), max=1.0)


@dataclass(frozen=True)
class ScoringGrid:
    """The Fourier-cropped grid particles are scored on: crop box, band, rings, score function.

    Built once per run by :func:`scoring_grid`; used by alignment and by the heterogeneity
    networks, so both score a particle the same way.
    """

    box: int
    crop: int
    pixel_size_angstrom: float
    max_frequency: float | None
    frequencies: torch.Tensor
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device


def scoring_grid(
    box: int,
    pixel_size_angstrom: float,
    min_resolution_angstrom: float | None,
    max_resolution_angstrom: float | None,
    band_average: str,
    device: torch.device,
) -> ScoringGrid:
    """Crop box whose Nyquist reaches ``max_resolution_angstrom`` (None: no crop), the scored
    band's ring weights, and the band score (:func:`~gmmsession.kernels.scoring.band_scorer`)."""
    dtype = torch.float32
    max_frequency = None if max_resolution_angstrom is None else 1.0 / max_resolution_angstrom
    b = fourier_crop_box_size(box, pixel_size_angstrom, max_frequency)
    weights = ring_band_weights(
        box, pixel_size_angstrom, min_resolution_angstrom, max_resolution_angstrom, device=device, dtype=dtype
    )[: b // 2 + 1]  # rings beyond the crop's Nyquist (corners, index b // 2 + 1) are dropped
    freqs = rfft_frequencies_2d(b, pixel_size_angstrom * box / b, device=device, dtype=dtype)  # same spacing as the full box
    score = band_scorer(band_average, shell_index_rfft(b, 2, device=device), weights)
    return ScoringGrid(box, b, pixel_size_angstrom, max_frequency, freqs, score, device)


def prepare_batch(
    images: torch.Tensor, params: ParticleTensors, grid: ScoringGrid, *, flip: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cropped spectra, CTF, rotations, in-plane shifts) of a batch on the grid's device;
    ``flip``: the spectra phase-flipped (the paper's ``"frc"`` scoring)."""
    spectra = crop_rfft_2d(rfft_centered_2d(images.to(grid.device, torch.float32)), grid.crop)
    params = params.to(grid.device)
    spectra, ctf = phase_flipped_spectra(spectra, grid.frequencies, params.ctf_kwargs(), flip=flip)
    return spectra, ctf, params.rotation.to(torch.float32), image_shift_angstrom_from_origin(params.origin_angstrom.to(torch.float32))


def refine_poses_chunk(
    images: torch.Tensor,
    params: ParticleTensors,
    gmm_positions: torch.Tensor,
    gmm_amplitudes: torch.Tensor,
    gmm_sigmas: torch.Tensor,
    pixel_size_angstrom: float,
    config: AlignConfig = AlignConfig(),
) -> PoseUpdate:
    """Refine the poses of a chunk of particles against one GMM.

    Parameters
    ----------
    images : (n, box, box) real tensor
        Particle images as stored (not phase-flipped), even ``box``.
    params : ParticleTensors
        Their starting poses and CTF parameters (n particles).
    gmm_positions : (G, 3) tensor, centres in Å from voxel ``box // 2``.
    gmm_amplitudes : (G,) tensor, peak amplitudes (any scale: the FRC ignores it).
    gmm_sigmas : (G,) tensor, widths in Å.
    pixel_size_angstrom : float, pixel size of ``images`` (Å).
    config : AlignConfig

    Returns
    -------
    PoseUpdate on the compute device (``positions`` None).
    """
    _check_inputs(images, params, gmm_positions, gmm_amplitudes, gmm_sigmas)
    device = torch.device(config.device) if config.device is not None else images.device
    dtype = torch.float32
    box = int(images.shape[-1])
    n = int(images.shape[0])
    pos = gmm_positions.to(device, dtype)
    amp = gmm_amplitudes.to(device, dtype)
    sig = gmm_sigmas.to(device, dtype)
    params = params.to(device)
    length = config.length_scale_angstrom or _radius_of_gyration(pos, amp, sig)

    grid = scoring_grid(
        box, pixel_size_angstrom, config.min_resolution_angstrom, config.max_resolution_angstrom, config.band_average, device
    )

    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("rotation", "origin", "score", "initial")}
    batch_size = config.batch_size or _DEFAULT_BATCH.get(device.type, _DEFAULT_BATCH["cuda"])
    exact = config.scoring == "ctf_exact"

    def run(spectra: torch.Tensor, ctf: torch.Tensor, rot0: torch.Tensor, shift0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _refine_batch(
            spectra, ctf if exact else None, rot0, shift0, pos, amp, sig, box, pixel_size_angstrom, grid.max_frequency,
            grid.score, length, config,
        )

    # CUDA graphs pay off from the third full batch on (one eager, one capture).
    graphed = device.type == "cuda" and config.cuda_graphs and n >= 3 * batch_size
    step = _GraphedBatches(run) if graphed else run
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(config.tf32 and device.type == "cuda")
    try:
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            spectra, ctf, rot0, shift0 = prepare_batch(images[sl], params.select(sl), grid, flip=config.scoring == "frc")
            best_theta, score, initial = step(spectra, ctf, rot0, shift0)
            out["rotation"].append(rotvec_to_matrix(best_theta[:, :3]) @ rot0)
            out["origin"].append(origin_angstrom_from_image_shift(shift0 + best_theta[:, 3:] * length))
            out["score"].append(score)
            out["initial"].append(initial)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before

    if n == 0:
        empty = torch.zeros(0, device=device, dtype=dtype)
        return PoseUpdate(torch.zeros(0, 3, 3, device=device), torch.zeros(0, 2, device=device), empty, empty, empty, empty)
    rotation = torch.cat(out["rotation"])
    origin = torch.cat(out["origin"])
    return PoseUpdate(
        rotation=rotation,
        origin_angstrom=origin,
        score=torch.cat(out["score"]),
        initial_score=torch.cat(out["initial"]),
        angle_change_deg=geodesic_angle_deg(params.rotation.to(torch.float64), rotation.to(torch.float64)).to(dtype),
        shift_change_angstrom=(origin - params.origin_angstrom.to(dtype)).norm(dim=-1),
    )


def _refine_batch(
    spectra: torch.Tensor,
    ctf: torch.Tensor | None,
    rot0: torch.Tensor,
    shift0: torch.Tensor,
    pos: torch.Tensor,
    amp: torch.Tensor,
    sig: torch.Tensor,
    box: int,
    pixel_size_angstrom: float,
    max_frequency: float | None,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    length: float,
    config: AlignConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam on (delta, u) for one batch; returns the best (delta, u) seen, its score and the start's.

    Adam is written out (the update of ``torch.optim.Adam`` with the cosine learning-rate
    schedule baked in per step) and the loop has no host-device synchronisation, so on CUDA the
    whole loop can be captured in one CUDA graph (:class:`_GraphedBatches`).
    """
    m = spectra.shape[0]
    theta = torch.zeros(m, 5, device=spectra.device, dtype=rot0.dtype)
    exp_avg = torch.zeros_like(theta)
    exp_avg_sq = torch.zeros_like(theta)
    beta1, beta2 = config.adam_betas
    max_angle = None if config.max_angle_deg is None else math.radians(config.max_angle_deg)
    max_u = None if config.max_shift_angstrom is None else config.max_shift_angstrom / length

    def score_of(t: torch.Tensor) -> torch.Tensor:
        rot = rotvec_to_matrix(t[:, :3]) @ rot0
        proj = project_gaussians_rfft_2d(pos, amp, sig, rot, shift0 + t[:, 3:] * length, box, pixel_size_angstrom, max_frequency)
        if ctf is not None:
            proj = proj * ctf
        return score_fn(proj, spectra)

    best_theta = torch.zeros_like(theta)
    best = initial = None
    for step in range(config.n_steps + 1):
        last = step == config.n_steps
        if last:
            with torch.no_grad():
                score = score_of(theta)
        else:
            with torch.enable_grad():
                t = theta.detach().requires_grad_(True)
                score = score_of(t)
                (grad,) = torch.autograd.grad(-score.sum(), t)  # per-particle losses: gradients do not mix
        score = score.detach()
        if best is None:
            best, initial = score.clone(), score.clone()
        else:
            better = score > best
            best = torch.where(better, score, best)
            best_theta = torch.where(better[:, None], theta, best_theta)
        if last:
            break
        lr = config.learning_rate * (
            config.final_lr_fraction
            + (1 - config.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * step / max(config.n_steps - 1, 1)))
        )
        # torch.optim.Adam's update (eps 1e-8, bias-corrected moments).
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1 = 1 - beta1 ** (step + 1)
        bias2 = 1 - beta2 ** (step + 1)
        denom = (exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(1e-8)
        theta = theta.addcdiv(exp_avg, denom, value=-lr / bias1)
        theta = torch.cat([_project_to_ball(theta[:, :3], max_angle), _project_to_ball(theta[:, 3:], max_u)], dim=1)
    return best_theta, best, initial


class _GraphedBatches:
    """Replays one CUDA graph of :func:`_refine_batch` for every full batch of a chunk.

    A batch of the alignment launches a few thousand small kernels (10 Adam steps of
    projection, score and gradient); at small batches the GPU then waits on the CPU. The first
    full batch runs eagerly on a side stream (its result is kept; it also compiles the Triton
    kernels and sets up cuBLAS), the loop is then captured once, and each further batch copies
    its inputs into the graph's buffers and replays it. Partial batches run eagerly.
    """

    def __init__(self, run: Callable[..., tuple[torch.Tensor, ...]]):
        self._run = run
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: tuple[torch.Tensor, ...] = ()
        self._outputs: tuple[torch.Tensor, ...] = ()
        self._shapes: tuple | None = None

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shapes = tuple(t.shape for t in inputs)
        if self._graph is not None and shapes == self._shapes:
            for static, t in zip(self._inputs, inputs):
                static.copy_(t)
            self._graph.replay()
            return tuple(o.clone() for o in self._outputs)
        if self._shapes is not None:  # a partial batch: eager
            return self._run(*inputs)
        self._shapes = shapes
        self._inputs = tuple(t.clone() for t in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            result = self._run(*self._inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._outputs = self._run(*self._inputs)
        self._graph = graph
        return result


def concat_pose_updates(updates: list[PoseUpdate]) -> PoseUpdate:
    """Concatenate updates (moved to the CPU) in order; ``positions`` concatenated when all have them."""
    if not updates:
        raise ValueError("no PoseUpdate to concatenate")
    fields = {f.name: torch.cat([getattr(u, f.name).cpu() for u in updates]) for f in dataclasses.fields(PoseUpdate) if f.name != "positions"}
    positions = None
    if all(u.positions is not None for u in updates):
        positions = np.concatenate([u.positions for u in updates])
    return PoseUpdate(**fields, positions=positions)


def _merged_in_order(parts: list[tuple[torch.Tensor, PoseUpdate]], n: int) -> PoseUpdate:
    """One update for ``n`` particles from ``(index, update)`` parts that cover them (each part's
    rows go to its indices), on the first part's device; no ``positions``."""
    fields = {}
    for f in dataclasses.fields(PoseUpdate):
        if f.name == "positions":
            continue
        first = getattr(parts[0][1], f.name)
        out = first.new_empty((n, *first.shape[1:]))
        for index, update in parts:
            out[index.to(out.device)] = getattr(update, f.name).to(out.device)
        fields[f.name] = out
    return PoseUpdate(**fields)


def pixel_size_groups(pixel_size_angstrom: torch.Tensor) -> list[tuple[float, torch.Tensor | None]]:
    """``(pixel size, index)`` per distinct pixel size of a batch's particles (``index`` on the
    CPU; None when all particles share one pixel size): optics groups of one box may differ in
    pixel size, and each particle is scored on its own pixel grid."""
    pixel = pixel_size_angstrom.detach().cpu()
    values = torch.unique(pixel).tolist()
    if len(values) == 1:
        return [(float(values[0]), None)]
    return [(float(v), torch.nonzero(pixel == v).squeeze(-1)) for v in values]


def refine_poses_per_pixel_size(
    images: torch.Tensor,
    params: ParticleTensors,
    gmm_positions: torch.Tensor,
    gmm_amplitudes: torch.Tensor,
    gmm_sigmas: torch.Tensor,
    config: AlignConfig = AlignConfig(),
) -> PoseUpdate:
    """:func:`refine_poses_chunk` for particles of optics groups with different pixel sizes (one box).

    Each pixel size's particles are aligned against the GMM projected on their own pixel grid
    (``params.pixel_size_angstrom``): the projection is analytic, so nothing is resampled (RELION
    3.1 rescales such groups instead). The update comes back in the particles' order, on the
    compute device.
    """
    groups = pixel_size_groups(params.pixel_size_angstrom)
    if groups[0][1] is None:
        return refine_poses_chunk(images, params, gmm_positions, gmm_amplitudes, gmm_sigmas, groups[0][0], config)
    parts = [
        (sel, refine_poses_chunk(images[sel.to(images.device)], params.select(sel), gmm_positions, gmm_amplitudes, gmm_sigmas,
                                 value, config))
        for value, sel in groups
    ]
    return _merged_in_order(parts, int(params.pixel_size_angstrom.shape[0]))


def refine_poses(
    chunks: Iterable[ParticleChunk],
    gmm_by_half: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    config: AlignConfig = AlignConfig(),
    progress: Callable[[int], None] | None = None,
) -> PoseUpdate:
    """Refine every particle of a chunk stream against **its own half set's** GMM.

    Each particle is aligned on its own pixel grid (``params.pixel_size_angstrom``, from its
    optics group; :func:`refine_poses_per_pixel_size`), as the refinement loop does.

    Parameters
    ----------
    chunks : iterable of :class:`~gmmsession.data.chunks.ParticleChunk`
        Read lazily, one chunk at a time.
    gmm_by_half : {1: (positions (G1, 3) Å, amplitudes (G1,), sigmas (G1,) Å), 2: (...)}
        The reference of each half set; a particle of half ``h`` only ever sees ``gmm_by_half[h]``.
    config : AlignConfig
    progress : called as ``progress(n_done)`` after each chunk.

    Returns
    -------
    PoseUpdate on the CPU, in stream order, with ``positions`` (along ``particle``).

    Raises
    ------
    ValueError
        If a chunk holds particles of a half set with no GMM.
    """
    updates: list[PoseUpdate] = []
    n_done = 0
    for chunk in chunks:
        halves = chunk.halves.cpu()
        n = int(halves.shape[0])
        parts: list[tuple[torch.Tensor, PoseUpdate]] = []
        for half in torch.unique(halves).tolist():
            if half not in gmm_by_half:
                raise ValueError(f"particles of half set {half} but gmm_by_half has only {sorted(gmm_by_half)}")
            index = torch.nonzero(halves == half).squeeze(-1)
            idx_dev = index.to(chunk.images.device)
            pos, amp, sig = gmm_by_half[half]
            update = refine_poses_per_pixel_size(
                chunk.images[idx_dev], chunk.params.select(idx_dev.to(chunk.params.rotation.device)), pos, amp, sig, config,
            )
            parts.append((index, update))
        if parts:  # the per-half results back in the chunk's order
            updates.append(dataclasses.replace(_merged_in_order(parts, n), positions=np.asarray(chunk.positions)))
        n_done += n
        if progress is not None:
            progress(n_done)
    if not updates:
        z = torch.zeros(0)
        return PoseUpdate(torch.zeros(0, 3, 3), torch.zeros(0, 2), z, z, z, z, positions=np.zeros(0, dtype=np.int64))
    return concat_pose_updates(updates)
