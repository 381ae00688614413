"""Build a Gaussian mixture model (GMM) from a half map: choose N, seed the centres, fit.

The paper's "Construction of Gaussian model", step by step:

1. **Number of Gaussians** (:func:`estimate_n_gaussians`): N such that the mean
   nearest-neighbour distance between the K-means centres of the map's density equals the
   target resolution. Instead of building "many GMMs of variable N", a few K-means fits on a
   density-weighted subsample are enough: the mean nearest-neighbour distance ``D`` of
   K-means centres in a fixed volume scales as ``N^(-1/3)``, so ``N`` is updated by a secant
   step in ``(log N, log D)`` (first slope ``-1/3``, then the measured one) until ``D`` is
   within ``tolerance`` of the resolution (3-4 K-means fits in practice).
2. **Seeding**: (a) K-means (scikit-learn) of the voxels above a density threshold, weighted
   by their density (:func:`kmeans_centres`, threshold from :func:`density_threshold`); or
   (b) one Gaussian per non-H atom of a PDB/mmCIF (gemmi, :func:`model_centres`), each
   position displaced by a seeded Gaussian random vector whose per-axis standard deviation
   is ``resolution / (pi sqrt 2)`` (the "randomized at the gold-standard resolution" of the
   paper: the expected structure factor of the displaced atoms is damped by
   ``exp(-2 pi^2 s^2 |k|^2)``, i.e. by ``1/e`` at the resolution, so the model's detail
   beyond the resolution is not passed on). (c) Warm start from a previous GMM (``initial``).
3. **Fit** (:func:`fit_gmm`): positions, amplitudes and widths are fitted **in Fourier space**
   on a Fourier-cropped grid holding only the shells up to the target resolution (so the
   cost follows the resolution, not the box): Adam on the per-shell relative squared error
   of :func:`~gmmsession.kernels.gmm_fit.fourier_fit_loss` (an FSC-like loss, every shell
   up to the resolution weighs the same); optionally coarse to fine (``coarse_fraction``), off by
   default. Parameterisation: positions in Å; amplitudes
   ``A = exp(a)``; widths ``sigma = sigma_min + exp(w)`` (bounded below by ``sigma_min``,
   default half a voxel). Fresh seeds start with equal amplitudes (their least-squares scale)
   and equal widths (``init_width_fraction * resolution``), as in the paper; learning rates
   decay on a cosine to a tenth.

Coordinates: every position is ``(x, y, z)`` in Å from voxel ``box // 2`` (the gmmsession
frame, :mod:`gmmsession.kernels.conventions`). Atomic-model coordinates are converted with
the map's header origin (:func:`gmmsession.data.io.mrc.read_map_with_origin`): an atom at
model coordinate ``r`` is at ``r - origin - (box // 2) * pixel``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from gmmsession.data.gmm import GmmTensors
from gmmsession.data.io.models import AtomicModel, read_atomic_model
from gmmsession.kernels.conventions import real_space_center_index
from gmmsession.kernels.device import resolve_device
from gmmsession.kernels.fourier import rfft_centered_3d
from gmmsession.kernels.gmm_fit import (
    crop_rfft_3d,
    fit_box_size,
    fourier_fit_loss,
    gaussians_rfft_3d_cropped,
    max_shell_for_resolution,
    nearest_neighbour_distances,
    shell_correlation_rfft_3d,
    shell_weights_rfft_3d,
)

__all__ = [
    "GmmBuildConfig",
    "GmmBuildReport",
    "density_threshold",
    "kmeans_centres",
    "estimate_n_gaussians",
    "model_centres",
    "fit_gmm",
    "build_gmm",
]


@dataclass(frozen=True)
class GmmBuildConfig:
    """Options of :func:`build_gmm` (all have working defaults).

    Attributes
    ----------
    n_iter : Adam steps of the Fourier-space fit.
    threshold : density threshold for the K-means voxels (map units); ``None``: :func:`density_threshold`.
    noise_sigmas, mass_fraction : parameters of the automatic threshold (:func:`density_threshold`).
    max_kmeans_samples : voxels given to K-means at most (density-weighted subsample beyond).
    kmeans_max_iter : Lloyd iterations per K-means fit.
    estimate_tolerance : relative tolerance on the mean nearest-neighbour distance when estimating N.
    estimate_max_trials : K-means fits at most when estimating N.
    nn_distance_fraction : N is estimated so that the mean nearest-neighbour distance of the
        centres is this fraction of the resolution. The paper uses 1; 0.5 is the default here
        because with spacing = resolution the fitted GMM reaches FSC 0.9 only *on average* over
        the shells (the paper's "average FSC greater than 0.9"), not in the last shells: to carry
        detail at resolution d the centres must sample it at d / 2 or finer (Nyquist). Measured on
        ref_model.mrc at 45 Å: spacing 1.0 d gives 6 Gaussians and FSC 0.70 in the last shell,
        0.65 d gives 20 Gaussians and 0.93.
    init_width_fraction : initial width of fresh seeds, as a fraction of the resolution.
    min_width_angstrom : lower bound of the widths (Å); ``None``: half a voxel.
    lr_position_fraction : Adam learning rate of the positions, as a fraction of the resolution (Å per step).
    lr_log_amplitude, lr_log_width : Adam learning rates of ``log A`` and ``log(sigma - sigma_min)``.
    model_randomize_angstrom : per-axis standard deviation (Å) of the random displacement of
        atoms seeded from a model; ``None``: ``resolution / (pi sqrt 2)``; 0: none.
    include_water : seed Gaussians on water oxygens too.
    chunk_size : Gaussians per contraction in the Fourier transform (memory ``b^2 * chunk_size``).
    coarse_fraction, coarse_resolution_factor : the first ``coarse_fraction`` of the steps fit
        only the shells up to ``coarse_resolution_factor * resolution`` (a grid about 8 times
        smaller for the factor 2: cheap steps that place the Gaussians), the rest all shells up
        to the resolution. Skipped when the coarse resolution leaves fewer than 2 shells. Off
        by default: measured at equal step counts it saved little time (the fine steps dominate)
        and ended at a lower FSC (last shell 0.93 vs 0.94 on the simulated test map).
    """

    n_iter: int = 200
    threshold: float | None = None
    noise_sigmas: float = 3.0
    mass_fraction: float = 0.95
    max_kmeans_samples: int = 40_000
    kmeans_max_iter: int = 50
    estimate_tolerance: float = 0.03
    estimate_max_trials: int = 6
    nn_distance_fraction: float = 0.5
    init_width_fraction: float = 0.25
    min_width_angstrom: float | None = None
    lr_position_fraction: float = 0.02
    lr_log_amplitude: float = 0.05
    lr_log_width: float = 0.03
    model_randomize_angstrom: float | None = None
    include_water: bool = False
    chunk_size: int = 1024
    coarse_fraction: float = 0.0
    coarse_resolution_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.n_iter < 0:
            raise ValueError(f"n_iter must be >= 0, got {self.n_iter}")
        if not 0 < self.mass_fraction <= 1:
            raise ValueError(f"mass_fraction must be in (0, 1], got {self.mass_fraction}")
        if self.max_kmeans_samples < 10 or self.kmeans_max_iter < 1 or self.estimate_max_trials < 1:
            raise ValueError("max_kmeans_samples >= 10, kmeans_max_iter >= 1 and estimate_max_trials >= 1 are required")
        if not 0 <= self.coarse_fraction < 1 or self.coarse_resolution_factor < 1:
            raise ValueError(
                f"need 0 <= coarse_fraction < 1 and coarse_resolution_factor >= 1, got {self.coarse_fraction}, {self.coarse_resolution_factor}"
            )
        if self.nn_distance_fraction <= 0:
            raise ValueError(f"nn_distance_fraction must be > 0, got {self.nn_distance_fraction}")
        if self.init_width_fraction <= 0 or self.lr_position_fraction < 0 or self.lr_log_amplitude < 0 or self.lr_log_width < 0:
            raise ValueError("init_width_fraction must be > 0 and learning rates >= 0")
        if self.min_width_angstrom is not None and self.min_width_angstrom <= 0:
            raise ValueError(f"min_width_angstrom must be > 0, got {self.min_width_angstrom}")


@dataclass(frozen=True)
class GmmBuildReport:
    """What :func:`build_gmm` / :func:`fit_gmm` did and how well the GMM matches the map.

    ``fsc`` holds the FSC between GMM and map per shell ``0 .. max_shell`` (shell ``i`` at
    ``box * pixel / i`` Å); ``min_fsc`` / ``mean_fsc`` are over shells ``1 .. max_shell``.
    ``estimate_trials`` lists ``(N, mean nearest-neighbour distance in Å)`` of the K-means
    fits made to choose N (empty when N was given).
    """

    n_gaussians: int
    seeding: str
    resolution_angstrom: float
    fit_box_size: int
    max_shell: int
    n_iter: int
    threshold: float | None
    estimate_trials: tuple[tuple[int, float], ...]
    loss_initial: float
    loss_final: float
    fsc: np.ndarray = field(repr=False)
    min_fsc: float
    mean_fsc: float
    mean_nn_distance_angstrom: float
    seconds: float
    seconds_seeding: float
    device: str

    def as_dict(self) -> dict[str, object]:
        """Plain-Python dict (lists, floats) for history records."""
        d = asdict(self)
        d["fsc"] = [float(x) for x in self.fsc]
        d["estimate_trials"] = [list(t) for t in self.estimate_trials]
        return d


# ----------------------------------------------------------------------------- helpers


def _volume_tensor(volume: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    vol = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"volume must be a cubic (box, box, box) map indexed [z, y, x], got shape {tuple(vol.shape)}")
    if not torch.isfinite(vol).all():
        raise ValueError("volume holds NaN or Inf values")
    return vol.to(device=device, dtype=torch.float32)


def _check_geometry(pixel_size_angstrom: float, resolution_angstrom: float) -> None:
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")
    if not resolution_angstrom >= 2 * pixel_size_angstrom * (1 - 1e-6):
        raise ValueError(
            f"resolution_angstrom {resolution_angstrom} is finer than Nyquist (2 x {pixel_size_angstrom} Å)"
        )


def density_threshold(volume: torch.Tensor | np.ndarray, noise_sigmas: float = 3.0, mass_fraction: float = 0.95) -> float:
    """Default density level for K-means seeding: above the noise, holding most of the mass.

    ``t_noise = median + noise_sigmas * 1.4826 * MAD`` of all voxels (the solvent dominates a
    particle box, so median and MAD describe the solvent and its noise); then the highest level
    ``t >= t_noise`` such that the voxels above ``t`` still hold ``mass_fraction`` of the
    density above ``t_noise`` (this drops the faint tails of low-pass filtered or noise-free
    maps, where the MAD is close to 0). Returns ``max`` of both.
    """
    v = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume).detach().reshape(-1).to("cpu", torch.float64)
    med = v.median()
    mad = (v - med).abs().median() * 1.4826
    t_noise = float(med + noise_sigmas * mad)
    above = v[v > t_noise]
    if above.numel() == 0:
        raise ValueError(f"no voxel above the noise threshold {t_noise:g}: is the map empty?")
    mass = above - t_noise
    ordered = torch.sort(mass, descending=True).values
    cum = torch.cumsum(ordered, 0)
    k = int(torch.searchsorted(cum, mass_fraction * cum[-1]).clamp(max=ordered.numel() - 1))
    return float(max(t_noise, float(ordered[k]) + t_noise))


def _voxel_cloud(
    volume: torch.Tensor, pixel_size_angstrom: float, threshold: float, max_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Å coordinates ``(x, y, z)`` of the voxels above ``threshold`` and their weights (density).

    Beyond ``max_samples`` voxels, ``max_samples`` points are drawn with probability
    proportional to density (with replacement) and jittered uniformly within their voxel; they
    then carry equal weights (``None``).
    """
    vol = volume.detach().to("cpu", torch.float64).numpy()
    box = vol.shape[0]
    zyx = np.argwhere(vol > threshold)
    if zyx.shape[0] == 0:
        raise ValueError(f"no voxel above the threshold {threshold:g}")
    w = vol[tuple(zyx.T)]
    xyz = (zyx[:, ::-1].astype(np.float64) - real_space_center_index(box)) * pixel_size_angstrom
    if zyx.shape[0] <= max_samples:
        return xyz, w
    pick = rng.choice(zyx.shape[0], size=max_samples, replace=True, p=w / w.sum())
    jitter = rng.uniform(-0.5, 0.5, size=(max_samples, 3)) * pixel_size_angstrom
    return xyz[pick] + jitter, None


VOXELS_PER_GAUSSIAN_MIN = 4


def _kmeans(points: np.ndarray, weights: np.ndarray | None, n_clusters: int, seed: int, max_iter: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    if n_clusters > points.shape[0]:
        raise ValueError(f"cannot place {n_clusters} Gaussians on {points.shape[0]} voxels above the threshold")
    km = KMeans(n_clusters=n_clusters, n_init=1, max_iter=max_iter, random_state=seed, tol=1e-4)
    km.fit(points, sample_weight=weights)
    return km.cluster_centers_


def kmeans_centres(
    volume: torch.Tensor | np.ndarray,
    pixel_size_angstrom: float,
    n_gaussians: int,
    threshold: float | None = None,
    *,
    seed: int = 0,
    max_samples: int = 40_000,
    max_iter: int = 50,
) -> torch.Tensor:
    """K-means centres of the voxels above ``threshold``, weighted by density.

    Parameters
    ----------
    volume : (box, box, box) map ``[z, y, x]``.
    pixel_size_angstrom : voxel size (Å).
    n_gaussians : number of centres.
    threshold : density level; ``None``: :func:`density_threshold`.
    seed : K-means initialisation and subsampling seed.
    max_samples : voxels used at most (density-weighted subsample beyond, see module docstring).
    max_iter : Lloyd iterations.

    Returns
    -------
    (n_gaussians, 3) float64 CPU tensor, ``(x, y, z)`` in Å from voxel ``box // 2``.
    """
    if n_gaussians < 1:
        raise ValueError(f"n_gaussians must be >= 1, got {n_gaussians}")
    vol = _volume_tensor(volume, torch.device("cpu"))
    t = density_threshold(vol) if threshold is None else float(threshold)
    rng = np.random.default_rng(seed)
    points, weights = _voxel_cloud(vol, pixel_size_angstrom, t, max(max_samples, 10 * n_gaussians), rng)
    return torch.as_tensor(_kmeans(points, weights, n_gaussians, seed, max_iter))


def estimate_n_gaussians(
    volume: torch.Tensor | np.ndarray,
    pixel_size_angstrom: float,
    resolution_angstrom: float,
    threshold: float | None = None,
    *,
    seed: int = 0,
    max_samples: int = 20_000,
    max_iter: int = 30,
    tolerance: float = 0.03,
    max_trials: int = 6,
    nn_distance_fraction: float = 1.0,
    return_trials: bool = False,
    _return_centres: bool = False,
) -> int | tuple[int, list[tuple[int, float]]] | tuple[int, list[tuple[int, float]], torch.Tensor | None]:
    """Number of Gaussians whose K-means centres are ``nn_distance_fraction * resolution_angstrom`` apart on average.

    The default fraction 1 is the paper's rule; :func:`build_gmm` uses
    ``GmmBuildConfig.nn_distance_fraction`` (0.5, see there).

    The statistic is the mean nearest-neighbour distance ``D(N)`` of the K-means centres
    (:func:`kmeans_centres` on a density-weighted subsample of at most
    ``max(max_samples, 5 N)`` points). Start: ``N0 = V / (2 d^3)`` with ``V`` the volume above
    the threshold and ``d`` the target spacing; then secant steps in ``(log N, log D)`` (slope
    ``-1/3`` first, afterwards the one measured between the last two trials when their N
    differ by more than 20 %, clamped to ``[-1, -0.1]``) until
    ``|D / d - 1| <= tolerance`` or ``max_trials`` fits were made. Returns the N of the last
    step's prediction (or of the trial that met the tolerance).

    Parameters
    ----------
    volume : (box, box, box) map. pixel_size_angstrom : voxel size (Å).
    resolution_angstrom : target resolution (Å).
    threshold : density level (default :func:`density_threshold`).
    seed, max_samples, max_iter : K-means subsampling and fit options.
    tolerance, max_trials : stopping rule.
    nn_distance_fraction : the target mean nearest-neighbour distance is
        ``nn_distance_fraction * resolution_angstrom`` (1: the paper's rule).
    return_trials : also return the list of ``(N, D)`` trials.

    Returns
    -------
    N (int, >= 2), or ``(N, trials)``.
    """
    _check_geometry(pixel_size_angstrom, resolution_angstrom)
    vol = _volume_tensor(volume, torch.device("cpu"))
    t = density_threshold(vol) if threshold is None else float(threshold)
    n_above = int((vol > t).sum())
    if n_above < 2:
        raise ValueError(f"fewer than two voxels above the threshold {t:g}")
    rng = np.random.default_rng(seed)
    if nn_distance_fraction <= 0:
        raise ValueError(f"nn_distance_fraction must be > 0, got {nn_distance_fraction}")
    d = float(resolution_angstrom) * nn_distance_fraction
    # K-means centres in a solid region sit about 1.25 (V / N)^(1/3) apart: start at N0 = V / (2 d^3).
    # At most one Gaussian per VOXELS_PER_GAUSSIAN_MIN voxels above the threshold: a Gaussian per voxel or finer cannot be fitted,
    # and near Nyquist the spacing rule would ask for more Gaussians than voxels.
    n_max = max(2, n_above // VOXELS_PER_GAUSSIAN_MIN)
    n = int(np.clip(round(0.5 * n_above * pixel_size_angstrom**3 / d**3), 2, n_max))
    trials: list[tuple[int, float]] = []
    centres_of: dict[int, torch.Tensor] = {}
    slope = -1.0 / 3.0
    for _ in range(max_trials):
        points, weights = _voxel_cloud(vol, pixel_size_angstrom, t, max(max_samples, 5 * n), rng)
        n_fit = min(n, points.shape[0])
        centres = torch.as_tensor(_kmeans(points, weights, n_fit, seed, max_iter))
        dist = float(nearest_neighbour_distances(centres).mean())
        trials.append((n_fit, dist))
        centres_of = {n_fit: centres}  # keep only the latest fit's centres
        if abs(dist / d - 1) <= tolerance:
            n = n_fit
            break
        if len(trials) >= 2:
            (n0, d0), (n1, d1) = trials[-2], trials[-1]
            # the measured slope only between clearly different N (K-means noise swamps small steps)
            if abs(math.log(n1 / n0)) > 0.2 and d0 > 0 and d1 > 0 and d0 != d1:
                slope = float(np.clip(math.log(d1 / d0) / math.log(n1 / n0), -1.0, -0.1))
        new_n = int(np.clip(round(n_fit * (d / dist) ** (1.0 / slope)), 2, n_max))
        if new_n == n_fit:
            n = new_n
            break
        n = new_n
    if _return_centres:  # build_gmm seeds with the last fit's centres when its N is the answer
        return n, trials, centres_of.get(n)
    return (n, trials) if return_trials else n


def model_centres(
    model: str | os.PathLike | AtomicModel | np.ndarray,
    box_size: int,
    pixel_size_angstrom: float,
    resolution_angstrom: float,
    *,
    map_origin_angstrom: Sequence[float] | np.ndarray | None = None,
    randomize_angstrom: float | None = None,
    include_water: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    """One centre per non-H atom of an atomic model, in the map frame, randomised at the resolution.

    Parameters
    ----------
    model : PDB/mmCIF path, :class:`~gmmsession.data.io.models.AtomicModel`, or an ``(n, 3)``
        array of model coordinates ``(x, y, z)`` in Å.
    box_size, pixel_size_angstrom : the map's box and voxel size.
    resolution_angstrom : gold-standard resolution (Å) that sets the randomisation.
    map_origin_angstrom : model coordinates (Å) of voxel index ``(0, 0, 0)`` as
        :func:`~gmmsession.data.io.mrc.read_map_with_origin` returns them; ``None``: ``(0, 0, 0)``
        (maps written by RELION and gmmsession: the model frame starts at the map's corner).
        Models already centred on voxel ``box // 2`` (the simulator's ``truth/model.pdb``) take
        ``-(box // 2) * pixel`` on each axis.
    randomize_angstrom : per-axis standard deviation of the displacement (Å); ``None``:
        ``resolution / (pi sqrt 2)`` (module docstring); 0: no displacement.
    include_water : keep water oxygens (only for paths and AtomicModel inputs).
    seed : the displacement's random seed.

    Returns
    -------
    (n, 3) float64 CPU tensor, ``(x, y, z)`` in Å from voxel ``box // 2``.
    """
    _check_geometry(pixel_size_angstrom, resolution_angstrom)
    if isinstance(model, (str, os.PathLike)):
        model = read_atomic_model(model, include_water=include_water)
    if isinstance(model, AtomicModel):
        keep = np.ones(len(model), dtype=bool) if include_water else ~model.is_water
        xyz = model.positions_angstrom[keep]
    else:
        xyz = np.asarray(model, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] < 1:
        raise ValueError(f"model coordinates must have shape (n, 3) with n >= 1, got {xyz.shape}")
    origin = np.zeros(3) if map_origin_angstrom is None else np.asarray(map_origin_angstrom, dtype=np.float64).reshape(3)
    centred = xyz - origin - real_space_center_index(box_size) * pixel_size_angstrom
    s = resolution_angstrom / (math.pi * math.sqrt(2)) if randomize_angstrom is None else float(randomize_angstrom)
    if s < 0:
        raise ValueError(f"randomize_angstrom must be >= 0, got {s}")
    if s > 0:
        centred = centred + np.random.default_rng(seed).normal(0.0, s, size=centred.shape)
    half_extent = 0.5 * box_size * pixel_size_angstrom
    outside = np.abs(centred).max(axis=1) > half_extent
    if outside.mean() > 0.5:
        raise ValueError(
            f"{outside.sum()} of {len(outside)} atoms fall outside the {box_size}-voxel box: wrong map_origin_angstrom? "
            f"(model centre {xyz.mean(0).round(1).tolist()} Å, box centre at {(origin + real_space_center_index(box_size) * pixel_size_angstrom).round(1).tolist()} Å)"
        )
    return torch.as_tensor(centred)


# ----------------------------------------------------------------------------- fit


def fit_gmm(
    volume: torch.Tensor | np.ndarray,
    pixel_size_angstrom: float,
    resolution_angstrom: float,
    initial: GmmTensors,
    *,
    n_iter: int | None = None,
    config: GmmBuildConfig | None = None,
    fresh: bool = True,
    device: torch.device | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[GmmTensors, dict[str, object]]:
    """Fit positions, amplitudes and widths of a GMM to a map in Fourier space (module docstring).

    Parameters
    ----------
    volume : (box, box, box) map ``[z, y, x]``.
    pixel_size_angstrom, resolution_angstrom : voxel size and target resolution (Å); shells
        ``0 .. floor(box * pixel / resolution)`` enter the loss.
    initial : starting mixture. With ``fresh=True`` only its positions are used: amplitudes
        start equal (their least-squares scale) and widths at ``init_width_fraction * resolution``;
        with ``fresh=False`` (warm start) all of it is used (widths clamped above ``sigma_min``).
    n_iter : Adam steps (default ``config.n_iter``).
    config : :class:`GmmBuildConfig`.
    device : torch device (default CUDA if available); float32 throughout.
    progress : called as ``progress(n_done)`` (cumulative steps) every few steps and at the end.

    Returns
    -------
    (fitted :class:`GmmTensors` on ``device``, metrics dict with ``loss_initial``,
    ``loss_final``, ``fsc`` (per shell, float64 numpy), ``min_fsc``, ``mean_fsc``,
    ``fit_box_size``, ``max_shell``, ``n_iter``).
    """
    cfg = config or GmmBuildConfig()
    steps = cfg.n_iter if n_iter is None else int(n_iter)
    if steps < 0:
        raise ValueError(f"n_iter must be >= 0, got {steps}")
    _check_geometry(pixel_size_angstrom, resolution_angstrom)
    dev = resolve_device(device)
    vol = _volume_tensor(volume, dev)
    box = int(vol.shape[-1])
    if initial.n_gaussians < 1:
        raise ValueError("the initial GMM has no Gaussians")
    full_spectrum = rfft_centered_3d(vol)

    def stage(res: float) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        """Cropped box, last shell, cropped map spectrum and loss weights for a resolution."""
        b_res = fit_box_size(box, pixel_size_angstrom, res)
        s_res = max_shell_for_resolution(box, pixel_size_angstrom, res)
        spec = crop_rfft_3d(full_spectrum, box, b_res)
        return b_res, s_res, spec, shell_weights_rfft_3d(spec, s_res)

    b, s_max, target, weights = stage(resolution_angstrom)
    fine = (b, target, weights)
    coarse_res = cfg.coarse_resolution_factor * resolution_angstrom
    n_coarse = int(round(cfg.coarse_fraction * steps))
    coarse = None
    if n_coarse > 0 and max_shell_for_resolution(box, pixel_size_angstrom, coarse_res) >= 2:
        b_c, _, target_c, weights_c = stage(coarse_res)
        coarse = (b_c, target_c, weights_c)
    sigma_min = 0.5 * pixel_size_angstrom if cfg.min_width_angstrom is None else float(cfg.min_width_angstrom)
    init = initial.to(dev, torch.float32)

    def spectrum(pos: torch.Tensor, amp: torch.Tensor, sig: torch.Tensor, box_out: int | None = None) -> torch.Tensor:
        return gaussians_rfft_3d_cropped(pos, amp, sig, box, pixel_size_angstrom, box_out or b, cfg.chunk_size)

    pos0 = init.positions_angstrom.clone()
    if fresh:
        sig0 = torch.full_like(init.amplitudes, max(cfg.init_width_fraction * resolution_angstrom, 1.5 * sigma_min))
        unit = spectrum(pos0, torch.ones_like(sig0), sig0)
        # Plain least squares over the fitted shells (low frequencies dominate it, as they should
        # for one overall scale; the per-shell weights would let noise in weak shells decide).
        inside = (weights > 0).to(target.real.dtype)
        num = (inside * (torch.view_as_real(unit) * torch.view_as_real(target)).sum(-1)).sum()
        den = (inside * torch.view_as_real(unit).square().sum(-1)).sum()
        scale = float(num / den) if float(den) > 0 else 0.0
        if not scale > 0:
            raise ValueError("the map has no positive overlap with the seeded Gaussians (empty or inverted map?)")
        amp0 = torch.full_like(sig0, scale)
    else:
        amp0 = init.amplitudes.clamp_min(1e-30 * float(init.amplitudes.abs().max().clamp_min(1e-30)))
        sig0 = init.widths_angstrom.clamp_min(1.01 * sigma_min)
        if not torch.isfinite(amp0).all() or float(amp0.max()) <= 0:
            raise ValueError("the warm-start GMM needs positive, finite amplitudes")

    pos = pos0.clone().requires_grad_(True)
    log_amp = torch.log(amp0).requires_grad_(True)
    log_wid = torch.log(sig0 - sigma_min).requires_grad_(True)
    opt = torch.optim.Adam(
        [
            {"params": [pos], "lr": cfg.lr_position_fraction * resolution_angstrom},
            {"params": [log_amp], "lr": cfg.lr_log_amplitude},
            {"params": [log_wid], "lr": cfg.lr_log_width},
        ]
    )
    base_lr = [g["lr"] for g in opt.param_groups]
    with torch.no_grad():
        loss_initial = float(fourier_fit_loss(spectrum(pos, torch.exp(log_amp), sigma_min + torch.exp(log_wid)), target, weights))
    report_every = max(1, steps // 50)
    for it in range(steps):
        frac = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * it / max(steps, 1)))
        for g, lr in zip(opt.param_groups, base_lr):
            g["lr"] = lr * frac
        box_out, spec, w = coarse if (coarse is not None and it < n_coarse) else fine
        opt.zero_grad(set_to_none=True)
        loss = fourier_fit_loss(spectrum(pos, torch.exp(log_amp), sigma_min + torch.exp(log_wid), box_out), spec, w)
        loss.backward()
        opt.step()
        if progress is not None and ((it + 1) % report_every == 0 or it + 1 == steps):
            progress(it + 1)

    with torch.no_grad():
        fitted = GmmTensors(pos.detach(), torch.exp(log_amp).detach(), (sigma_min + torch.exp(log_wid)).detach())
        final = spectrum(fitted.positions_angstrom, fitted.amplitudes, fitted.widths_angstrom)
        loss_final = float(fourier_fit_loss(final, target, weights))
        fsc = shell_correlation_rfft_3d(final, target)[..., : s_max + 1].cpu().numpy()
    inner = fsc[1:] if s_max >= 1 else fsc
    metrics: dict[str, object] = {
        "loss_initial": loss_initial,
        "loss_final": loss_final,
        "fsc": fsc,
        "min_fsc": float(inner.min()),
        "mean_fsc": float(inner.mean()),
        "fit_box_size": b,
        "max_shell": s_max,
        "n_iter": steps,
    }
    return fitted, metrics


# ----------------------------------------------------------------------------- build


def build_gmm(
    volume: torch.Tensor | np.ndarray,
    pixel_size_angstrom: float,
    resolution_angstrom: float,
    n_gaussians: int | None = None,
    model: str | os.PathLike | AtomicModel | np.ndarray | None = None,
    seed: int = 0,
    n_iter: int | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    config: GmmBuildConfig | None = None,
    initial: GmmTensors | None = None,
    map_origin_angstrom: Sequence[float] | np.ndarray | None = None,
) -> tuple[GmmTensors, GmmBuildReport]:
    """Build a GMM that matches a (half) map up to a target resolution.

    Seeding, in order of precedence: ``initial`` (warm start: the previous GMM is refitted,
    nothing is re-seeded), ``model`` (one Gaussian per non-H atom, randomised at
    ``resolution_angstrom``; ``n_gaussians`` must be ``None`` or the atom count), else K-means
    of the voxels above the density threshold with ``n_gaussians`` centres, estimated by
    :func:`estimate_n_gaussians` when ``None`` (the estimate's last K-means fit then seeds the
    GMM directly when its N is the answer, saving one K-means). Then :func:`fit_gmm`.

    Parameters
    ----------
    volume : (box, box, box) map ``[z, y, x]`` (numpy or torch), e.g. a half map.
    pixel_size_angstrom : voxel size (Å).
    resolution_angstrom : target resolution (Å), e.g. the current gold-standard resolution.
    n_gaussians : number of Gaussians, or ``None`` to estimate it.
    model : PDB/mmCIF path, :class:`~gmmsession.data.io.models.AtomicModel` or ``(n, 3)``
        model coordinates; placed with ``map_origin_angstrom`` (see :func:`model_centres`).
    seed : seeds K-means, subsampling and the model randomisation (results are deterministic
        for a given seed and device).
    n_iter : Adam steps of the fit (default ``config.n_iter``).
    device : torch device (default CUDA if available).
    progress : ``progress(n_done)`` with cumulative fit steps.
    config : :class:`GmmBuildConfig`.
    initial : previous GMM to warm-start from.
    map_origin_angstrom : model coordinates of voxel ``(0, 0, 0)`` (from
        :func:`~gmmsession.data.io.mrc.read_map_with_origin`); only used with ``model``.

    Returns
    -------
    (:class:`~gmmsession.data.gmm.GmmTensors` (float32, on ``device``), :class:`GmmBuildReport`).
    Use :func:`gmmsession.data.gmm.gmm_dataset` for the labelled form.
    """
    cfg = config or GmmBuildConfig()
    _check_geometry(pixel_size_angstrom, resolution_angstrom)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    vol_cpu = _volume_tensor(volume, torch.device("cpu"))
    box = int(vol_cpu.shape[-1])
    trials: list[tuple[int, float]] = []
    threshold: float | None = None
    if initial is not None:
        seeding, fresh = "warm", False
        start = initial
    elif model is not None:
        seeding, fresh = "model", True
        centres = model_centres(
            model,
            box,
            pixel_size_angstrom,
            resolution_angstrom,
            map_origin_angstrom=map_origin_angstrom,
            randomize_angstrom=cfg.model_randomize_angstrom,
            include_water=cfg.include_water,
            seed=seed,
        )
        if n_gaussians is not None and n_gaussians != centres.shape[0]:
            raise ValueError(f"n_gaussians={n_gaussians} but the model has {centres.shape[0]} atoms (one Gaussian per atom)")
        start = GmmTensors(centres, torch.ones(centres.shape[0], dtype=centres.dtype), torch.ones(centres.shape[0], dtype=centres.dtype))
    else:
        seeding, fresh = "kmeans", True
        threshold = density_threshold(vol_cpu, cfg.noise_sigmas, cfg.mass_fraction) if cfg.threshold is None else float(cfg.threshold)
        centres = None
        if n_gaussians is None:
            n_gaussians, trials, centres = estimate_n_gaussians(  # type: ignore[misc]
                vol_cpu,
                pixel_size_angstrom,
                resolution_angstrom,
                threshold,
                seed=seed,
                tolerance=cfg.estimate_tolerance,
                max_trials=cfg.estimate_max_trials,
                nn_distance_fraction=cfg.nn_distance_fraction,
                max_iter=cfg.kmeans_max_iter,
                _return_centres=True,
            )
        if centres is None:
            centres = kmeans_centres(
                vol_cpu, pixel_size_angstrom, int(n_gaussians), threshold, seed=seed, max_samples=cfg.max_kmeans_samples, max_iter=cfg.kmeans_max_iter
            )
        start = GmmTensors(centres, torch.ones(centres.shape[0], dtype=centres.dtype), torch.ones(centres.shape[0], dtype=centres.dtype))
    t_seed = time.perf_counter() - t0
    fitted, metrics = fit_gmm(
        vol_cpu, pixel_size_angstrom, resolution_angstrom, start, n_iter=n_iter, config=cfg, fresh=fresh, device=dev, progress=progress
    )
    nn = float(nearest_neighbour_distances(fitted.positions_angstrom).mean()) if fitted.n_gaussians >= 2 else float("nan")
    report = GmmBuildReport(
        n_gaussians=fitted.n_gaussians,
        seeding=seeding,
        resolution_angstrom=float(resolution_angstrom),
        fit_box_size=int(metrics["fit_box_size"]),
        max_shell=int(metrics["max_shell"]),
        n_iter=int(metrics["n_iter"]),
        threshold=threshold,
        estimate_trials=tuple((int(n), float(d)) for n, d in trials),
        loss_initial=float(metrics["loss_initial"]),
        loss_final=float(metrics["loss_final"]),
        fsc=np.asarray(metrics["fsc"]),
        min_fsc=float(metrics["min_fsc"]),
        mean_fsc=float(metrics["mean_fsc"]),
        mean_nn_distance_angstrom=nn,
        seconds=time.perf_counter() - t0,
        seconds_seeding=t_seed,
        device=str(dev),
    )
    return fitted, report
