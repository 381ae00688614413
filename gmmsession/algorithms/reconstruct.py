"""Half-map reconstruction by direct Fourier inversion, chunk by chunk.

:func:`backproject_chunk` is the pure, distributable step (images and their parameters in,
summable :class:`~gmmsession.kernels.reconstruct.FourierAccumulator` per half set out);
:func:`reconstruct_half_maps` streams chunks through it, sums and finalises. This reproduces
``relion_reconstruct --ctf --subset 1|2`` (no ``--fsc``): images are CTF-weighted
(``data += CTF * F``, ``weight += CTF^2``), shifted by ``+origin`` and inserted with trilinear
weights into a 2x padded Fourier grid.

With ``ReconstructConfig(symmetry="C3")`` (any group of
:func:`gmmsession.kernels.symmetry.symmetry_operators`) every image at pose ``A`` is inserted
once per operator, at ``A @ S_k`` (data and weights alike), as ``relion_reconstruct --sym``
reconstructs; ``"C1"`` runs the unchanged single insertion.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from gmmsession.data.bridge import ParticleTensors
from gmmsession.kernels.conventions import image_shift_angstrom_from_origin
from gmmsession.kernels.ctf import ctf_2d
from gmmsession.kernels.fourier import fourier_shift_rfft_2d, rfft_centered_2d, rfft_frequencies_2d
from gmmsession.kernels.reconstruct import FourierAccumulator, backproject_slices_rfft_2d, finalise_reconstruction
from gmmsession.kernels.symmetry import normalise_symmetry_name, symmetry_operators

__all__ = ["ReconstructConfig", "backproject_chunk", "accumulate_chunk", "finalise_half_maps", "reconstruct_half_maps"]

HALVES = (1, 2)


@dataclass(frozen=True)
class ReconstructConfig:
    """Settings of a half-map reconstruction.

    Attributes
    ----------
    pad_factor : int
        Oversampling of the 3D Fourier grid (RELION ``--pad``, default 2).
    chunk_size : int
        Particles per chunk when a caller splits a stack (the session's reader uses it; the
        functions here take whatever chunks they are given).
    ctf : bool
        Weight by the CTF (RELION ``--ctf``). False: plain averaging of the slices.
    device : str or None
        Where to accumulate (``"cpu"``, ``"cuda"``); None: the device of the images.
    max_resolution_angstrom : float or None
        Insert only frequencies up to this resolution (RELION ``--maxres``); None: Nyquist.
    weight_floor_fraction : float
        Per-shell relative floor on the weight at the division (see
        :func:`gmmsession.kernels.reconstruct.finalise_reconstruction`).
    parallel_halves : bool
        On CPU, insert the two half sets of a chunk in two threads (the insertion releases the
        GIL; on 2 cores this nearly halves the time).
    torch_threads : int or None
        ``torch.set_num_threads`` for the duration of :func:`reconstruct_half_maps` (restored
        afterwards). None: half of torch's threads (at least 1) when the two half sets run in
        parallel threads on the CPU, else unchanged — the half-set threads already use two
        cores, and intra-op threads on top of them oversubscribe a small CPU.
    prefetch_chunks : int
        Chunks read ahead in a background thread (0: read inline), so reading the stack
        overlaps with insertion.
    symmetry : str
        Point group imposed during insertion (RELION ``--sym``): ``"C1"`` (none), ``"Cn"``,
        ``"Dn"``, ``"T"``, ``"O"``, ``"I"`` / ``"I1"`` .. ``"I4"`` in RELION's orientations,
        case-insensitive. Each image at pose ``A`` is inserted at ``A @ S_k`` for every operator
        ``S_k`` (n_ops times the insertion work, no extra memory).
    """

    pad_factor: int = 2
    chunk_size: int = 512
    ctf: bool = True
    device: str | None = None
    max_resolution_angstrom: float | None = None
    weight_floor_fraction: float = 1e-3
    parallel_halves: bool = True
    torch_threads: int | None = None
    prefetch_chunks: int = 1
    symmetry: str = "C1"

    def __post_init__(self) -> None:
        normalise_symmetry_name(self.symmetry)  # ValueError for an unknown group, before any work


def _prepare_spectra(
    images: torch.Tensor, params: ParticleTensors, with_ctf: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Centred rffts shifted by ``+origin``, and the CTFs, each on the image's own frequency grid."""
    b = images.shape[-1]
    spectra = rfft_centered_2d(images)
    ctf = torch.empty(spectra.shape, dtype=torch.float32, device=images.device) if with_ctf else None
    pixel = params.pixel_size_angstrom.to(torch.float32)
    values = torch.unique(pixel).tolist()
    for value in values:
        # One pixel size (the usual case): work on the whole chunk without gather/scatter copies.
        sel = slice(None) if len(values) == 1 else torch.nonzero(pixel == value).squeeze(-1)
        freqs = rfft_frequencies_2d(b, float(value), device=images.device)
        sub = params.select(sel)
        # Undo the forward model's image shift (conventions: image = projection moved by -origin).
        spectra[sel] = fourier_shift_rfft_2d(spectra[sel], -image_shift_angstrom_from_origin(sub.origin_angstrom), freqs)
        if ctf is not None:
            ctf[sel] = ctf_2d(freqs, **sub.ctf_kwargs())
    return spectra, ctf


def _max_radius_px(out_box: int, out_pixel_size: float, config: ReconstructConfig) -> float | None:
    if config.max_resolution_angstrom is None:
        return None
    return min(out_box / 2, out_box * out_pixel_size / config.max_resolution_angstrom)


def backproject_chunk(
    images: torch.Tensor,
    params: ParticleTensors,
    halves: torch.Tensor,
    out_box: int,
    out_pixel_size: float,
    config: ReconstructConfig = ReconstructConfig(),
) -> dict[int, FourierAccumulator]:
    """Back-project one chunk of particle images into one accumulator per half set.

    Parameters
    ----------
    images : (n, b, b) real tensor
        Particle images as read from the stack (float32, not phase-flipped), ``[y, x]``.
    params : ParticleTensors with leading dimension n
        Poses, origins (Å), CTF parameters and per-particle pixel size (Å) from
        :func:`gmmsession.data.bridge.particle_tensors`.
    halves : (n,) int tensor
        Half set of each particle, 1 or 2 (``rlnRandomSubset``).
    out_box : int
        Box of the reconstructed map (voxels).
    out_pixel_size : float
        Voxel size of the map (Å). Particles whose pixel size differs are inserted at the scaled
        frequencies ``out_box * out_pixel_size / (b * pixel_size)``.
    config : ReconstructConfig

    Returns
    -------
    dict mapping each half present in the chunk (1 and/or 2) to its FourierAccumulator.
    """
    return accumulate_chunk(images, params, halves, out_box, out_pixel_size, config, {})


def accumulate_chunk(
    images: torch.Tensor,
    params: ParticleTensors,
    halves: torch.Tensor,
    out_box: int,
    out_pixel_size: float,
    config: ReconstructConfig,
    accumulators: dict[int, FourierAccumulator],
) -> dict[int, FourierAccumulator]:
    """:func:`backproject_chunk` adding into existing ``accumulators`` (half -> sums) in place.

    Returns the same dict (halves seen for the first time get new accumulators).
    """
    """:func:`backproject_chunk` adding into ``accumulators`` (created for halves missing there)."""
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must have shape (n, b, b), got {tuple(images.shape)}")
    n, b = images.shape[0], images.shape[-1]
    if params.rotation.shape != (n, 3, 3):
        raise ValueError(f"params are for {params.rotation.shape[0]} particles but images {tuple(images.shape)}")
    if halves.shape != (n,):
        raise ValueError(f"halves must have shape ({n},), got {tuple(halves.shape)}")
    bad = ~torch.isin(halves.cpu(), torch.tensor(HALVES))
    if bool(bad.any()):
        raise ValueError(f"halves must be 1 or 2, got {sorted(set(halves.cpu()[bad].tolist()))}")
    device = torch.device(config.device) if config.device is not None else images.device
    images = images.to(device=device, dtype=torch.float32)
    params = params.to(device)
    halves = halves.to(device)

    pixel = params.pixel_size_angstrom.to(torch.float32)
    scale = (out_box * out_pixel_size) / (b * pixel)
    radius = _max_radius_px(out_box, out_pixel_size, config)
    operators = symmetry_operators(config.symmetry, device=device)  # float64, identity first

    def insert(half: int) -> tuple[int, FourierAccumulator]:
        # Everything per half set, so that the two halves can run in parallel threads.
        sel = torch.nonzero(halves == half).squeeze(-1)
        sub = params.select(sel)
        spectra, ctf = _prepare_spectra(images[sel], sub, config.ctf)
        acc = accumulators.get(half)
        if acc is None:
            acc = FourierAccumulator.zeros(out_box, config.pad_factor, device=device)
        if operators.shape[0] == 1:  # C1: the plain insertion, bit-identical to no symmetry
            backproject_slices_rfft_2d(spectra, sub.rotation, acc, ctf=ctf, frequency_scale=scale[sel], max_radius_px=radius)
            return half, acc
        # The image at pose A is also a view at A @ S for every operator S (kernels.symmetry).
        rotation64 = sub.rotation.to(torch.float64)
        for op in operators:
            rotation = (rotation64 @ op).to(sub.rotation.dtype)
            backproject_slices_rfft_2d(spectra, rotation, acc, ctf=ctf, frequency_scale=scale[sel], max_radius_px=radius)
        return half, acc

    present = [h for h in HALVES if bool((halves == h).any())]
    if config.parallel_halves and device.type == "cpu" and len(present) == 2:
        with ThreadPoolExecutor(max_workers=2) as pool:
            accumulators.update(pool.map(insert, present))
    else:
        accumulators.update(insert(h) for h in present)
    return accumulators


def reconstruct_half_maps(
    chunks: Iterable[tuple[torch.Tensor, ParticleTensors, torch.Tensor]],
    box_size: int,
    pixel_size_angstrom: float,
    config: ReconstructConfig = ReconstructConfig(),
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Reconstruct both half maps from a stream of ``(images, params, halves)`` chunks.

    Parameters
    ----------
    chunks : iterable of (images (n, b, b), ParticleTensors, halves (n,))
        See :func:`backproject_chunk`; read lazily, one chunk in memory at a time.
    box_size : int
        Output box (voxels).
    pixel_size_angstrom : float
        Output voxel size (Å).
    config : ReconstructConfig
    progress : callable or None
        Called as ``progress(n_done)`` with the number of particles inserted so far.

    Returns
    -------
    (2, box, box, box) float32 tensor on the accumulation device: half 1 then half 2. A half with
    no particles is all zeros.
    """
    totals: dict[int, FourierAccumulator] = {}
    n_done = 0
    previous_threads = torch.get_num_threads()
    threads = config.torch_threads
    on_cpu = config.device is None or torch.device(config.device).type == "cpu"
    if threads is None and config.parallel_halves and on_cpu:
        threads = max(1, previous_threads // 2)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for images, params, halves in _prefetched(chunks, config.prefetch_chunks):
            accumulate_chunk(images, params, halves, box_size, pixel_size_angstrom, config, totals)
            n_done += int(images.shape[0])
            if progress is not None:
                progress(n_done)
        maps = finalise_half_maps(totals, box_size, pixel_size_angstrom, config)
    finally:
        torch.set_num_threads(previous_threads)
    device = maps[0].device
    return torch.stack([m.to(device) for m in maps])


def finalise_half_maps(
    totals: dict[int, FourierAccumulator], box_size: int, pixel_size_angstrom: float, config: ReconstructConfig
) -> list[torch.Tensor]:
    """Both half maps ``[half 1, half 2]`` from summed accumulators (an absent half gives zeros)."""
    radius = _max_radius_px(box_size, pixel_size_angstrom, config)

    def finalise(half: int) -> torch.Tensor:
        if half not in totals:
            device = torch.device(config.device) if config.device is not None else torch.device("cpu")
            return torch.zeros(box_size, box_size, box_size, device=device)
        return finalise_reconstruction(totals[half], config.weight_floor_fraction, radius).to(torch.float32)

    on_cpu = all(acc.data.device.type == "cpu" for acc in totals.values())
    if config.parallel_halves and on_cpu and len(totals) == 2:
        with ThreadPoolExecutor(max_workers=2) as pool:
            maps = list(pool.map(finalise, HALVES))
    else:
        maps = [finalise(h) for h in HALVES]
    return maps


def _prefetched(iterable: Iterable, depth: int) -> Iterator:
    """Iterate ``iterable`` with up to ``depth`` items produced ahead in a background thread.

    Reading the next chunk (memory-mapped stack, numpy -> torch) then overlaps with inserting
    the current one. Exceptions from the producer are re-raised here; ``depth = 0`` iterates
    inline.
    """
    if depth <= 0:
        yield from iterable
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterable:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(_Raised(exc))

    worker = threading.Thread(target=produce, daemon=True, name="gmmsession-prefetch")
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
