"""The built-in dataset generator: RELION 3.1 particles from an atomic model with a hinge.

Forward model (RELION's, no phase flip)
---------------------------------------
For particle ``i`` with pose ``A_i`` (RELION Euler angles), origin ``o_i`` (Å), CTF ``C_i`` and
hinge angle ``h_i``::

    image_i = irfft( C_i(k) * P_i(k) ) + noise_i

where ``P_i`` is the analytic Fourier transform of the projection of the atoms in conformation
``h_i`` (:func:`gmmsession.kernels.gmm.project_gaussians_rfft_2d`, atom ``r`` lands at
``(A_i r)[:2] - o_i``), ``C_i`` is :func:`gmmsession.kernels.ctf.ctf_2d` (RELION's CTF,
``CTF(0) = +Q0``, no envelope) and ``noise_i`` is white Gaussian noise. This is what
``relion_project --ctf`` computes from the truth map, up to voxelisation.

Atoms
-----
Each atom is a Gaussian of width ``sigma = sqrt(sigma_atom^2 + B / (8 pi^2))`` with
``sigma_atom = 0.5 Å`` (the width of a light atom's Coulomb potential seen at ~2-3 Å
resolution, about B = 20 Å^2) and ``B`` the atom's B-factor, so a typical atom of the
procedural protein (B = 30-70 Å^2) has sigma = 0.8-1.1 Å: at 3 Å (Nyquist at 1.5 Å pixels)
helices show their pitch, strands separate and side chains make bumps. An atom's integrated density ("mass") is proportional to its
element's weight (C 1.0, N 1.1, O 1.2, S 2.2, P 2.0; others ``(Z / 6)^0.7``); the
peak amplitudes are scaled so that the band-limited truth map has maximum 1.0.

SNR
---
``snr = mean_i var(clean_i) / noise_variance``: the variance over the whole box of each
CTF-modulated noise-free image (mean removed), averaged over **all** particles of the
dataset, divided by the variance of the white noise. It is exact for the dataset (the clean
images are written first, the noise is added in a second pass). This is the convention of
cryoDRGN's ``add_noise`` (signal variance over the box); RELION has no single SNR number (its
SSNR is per frequency). Because the particle fills only part of the box, the SNR inside the
particle is higher than ``snr`` by roughly the ratio of box area to particle area.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
import torch

from gmmsession._version import __version__
from gmmsession.algorithms.protein import (
    Protein,
    build_protein,
    hinge_rotate,
    protein_from_atomic_model,
    write_model_pdb,
)
from gmmsession.data.io._atomic import atomic_path
from gmmsession.data.io.mrc import write_map
from gmmsession.data.io.star import write_star_blocks
from gmmsession.kernels.conventions import (
    euler_relion_to_matrix,
    image_shift_angstrom_from_origin,
    matrix_to_euler_relion,
)
from gmmsession.kernels.ctf import ctf_2d
from gmmsession.kernels.device import resolve_device
from gmmsession.kernels.fourier import irfft_centered_2d, irfft_centered_3d, rfft_frequencies_2d
from gmmsession.kernels.gmm import gaussians_rfft_3d, project_gaussians_rfft_2d, render_gaussians_3d
from gmmsession.kernels.rotations import quaternion_to_matrix

__all__ = ["simulate", "SimulatedDataset", "atom_gaussians", "perturb_star_poses", "ATOM_SIGMA_ANGSTROM"]

ATOM_SIGMA_ANGSTROM = 0.5
_ELEMENT_WEIGHT = {"H": 0.2, "C": 1.0, "N": 1.1, "O": 1.2, "S": 2.2, "P": 2.0}
_PARTICLES_PER_MICROGRAPH = 50
_STAR_DECIMALS = 6  # starfile writes floats with %.6f: values are rounded first, so file == truth


@dataclass(frozen=True)
class SimulatedDataset:
    """Where a simulated dataset was written, with its ground truth.

    Attributes
    ----------
    out_dir, particles_star, stack, truth_dir, truth_map, mask, domain_masks, truth_star,
    truth_npz, model_pdb, parameters_json : paths.
    euler_deg : (n, 3) rot, tilt, psi (degrees) as written.
    rotations : (n, 3, 3) matrices of ``euler_deg`` (float64).
    origins_angstrom : (n, 2) ``rlnOriginXAngst/YAngst``.
    hinge_angle_deg : (n,) conformation of each particle (0 = the truth map's conformation).
    half : (n,) 1 or 2 (``rlnRandomSubset``).
    defocus_u_angstrom, defocus_v_angstrom, defocus_angle_deg : (n,) CTF parameters.
    signal_variance, noise_std : the SNR bookkeeping (image units).
    """

    out_dir: Path
    particles_star: Path
    stack: Path
    truth_dir: Path
    truth_map: Path
    mask: Path
    domain_masks: tuple[Path, ...]
    truth_star: Path
    truth_npz: Path
    model_pdb: Path
    parameters_json: Path
    euler_deg: np.ndarray
    rotations: np.ndarray
    origins_angstrom: np.ndarray
    hinge_angle_deg: np.ndarray
    half: np.ndarray
    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    defocus_angle_deg: np.ndarray
    signal_variance: float
    noise_std: float

    @property
    def n_particles(self) -> int:
        return int(self.euler_deg.shape[0])


def _element_weight(element: str) -> float:
    e = element.strip().upper()
    if e in _ELEMENT_WEIGHT:
        return _ELEMENT_WEIGHT[e]
    import gemmi

    z = gemmi.Element(e.capitalize()).atomic_number
    return (max(z, 1) / 6.0) ** 0.7


def atom_gaussians(protein: Protein) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled peak amplitudes and widths (Å) of the atoms, float64 ``(G,)`` each.

    ``sigma = sqrt(ATOM_SIGMA_ANGSTROM^2 + B / (8 pi^2))``; the amplitude gives each atom the
    integrated density of its element weight: ``A = w / (2 pi sigma^2)^(3/2)``.
    """
    b = torch.as_tensor(np.asarray(protein.bfactors_angstrom2, dtype=np.float64))
    sigma = torch.sqrt(ATOM_SIGMA_ANGSTROM**2 + b / (8 * math.pi**2))
    weight = torch.tensor([_element_weight(str(e)) for e in protein.elements], dtype=torch.float64)
    return weight / (2 * math.pi * sigma**2) ** 1.5, sigma


def _resolve_model(model: Protein | str | os.PathLike | None, seed: int) -> Protein:
    if model is None:
        return build_protein(seed=seed)
    if isinstance(model, Protein):
        return model
    return protein_from_atomic_model(model, seed=seed)


def _soft_domain_masks(protein: Protein, box_size: int, pixel_size_angstrom: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Whole-particle soft mask and one soft mask per domain (they sum to the whole mask).

    Atoms are rendered as unit Gaussians of sigma 2.5 Å; the particle mask rises from 0 to 1
    (raised cosine) as that density goes from 1 to 4 (about 3-4 Å outside the atoms to the
    surface); each domain takes its share ``rho_d / rho`` of the particle mask.
    """
    pos = torch.as_tensor(protein.positions_angstrom, dtype=torch.float64)
    per_domain = []
    for d in protein.domain_labels:
        sel = pos[torch.as_tensor(protein.domains == d)]
        unit = torch.ones(sel.shape[0], dtype=torch.float64)
        per_domain.append(render_gaussians_3d(sel, unit, 2.5 * unit, box_size, pixel_size_angstrom))
    total = sum(per_domain)
    ramp = torch.clamp((total - 1.0) / 3.0, 0.0, 1.0)
    mask = 0.5 - 0.5 * torch.cos(math.pi * ramp)
    shares = [mask * rho / total.clamp_min(1e-12) for rho in per_domain]
    return mask.numpy(), [s.numpy() for s in shares]


def simulate(
    out_dir: str | os.PathLike,
    n_particles: int = 5000,
    box_size: int = 64,
    pixel_size_angstrom: float = 1.5,
    snr: float = 0.1,
    model: Protein | str | os.PathLike | None = None,
    hinge_max_deg: float = 10.0,
    defocus_range_angstrom: tuple[float, float] = (8000.0, 25000.0),
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    seed: int = 0,
    chunk_size: int = 32,
    device: torch.device | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimulatedDataset:
    """Simulate a RELION 3.1 single-particle dataset with a hinge motion, and its ground truth.

    Parameters
    ----------
    out_dir : folder to write into (created). Writes ``particles.star``, ``particles.mrcs`` and
        ``truth/`` (``truth_map.mrc``, ``mask.mrc``, ``domain_<d>_mask.mrc``,
        ``truth_map_conf1.mrc`` / ``truth_map_conf2.mrc`` at ``-/+ hinge_max_deg``,
        ``truth_particles.star``, ``truth.npz``, ``model.pdb``, ``simulation.json``).
    n_particles : number of images.
    box_size, pixel_size_angstrom : image size (pixels) and pixel size (Å).
    snr : signal-to-noise ratio (module docstring); ``float('inf')`` for noise-free images.
    model : ``None`` (the procedural protein of :func:`build_protein` with this ``seed``), a
        :class:`~gmmsession.algorithms.protein.Protein`, or a PDB/mmCIF path.
    hinge_max_deg : hinge angles are uniform in ``[-hinge_max_deg, hinge_max_deg]`` (0: rigid).
    defocus_range_angstrom : micrograph defocus range (Å, underfocus positive); particles come
        in micrographs of 50 sharing a defocus (+-100 Å each), astigmatism 0-500 Å.
    voltage_kv, cs_mm, amplitude_contrast : optics.
    seed : everything (model, poses, CTF, halves, noise) is determined by it.
    chunk_size : particles per batch (memory ~ ``chunk_size * box * n_atoms * 16`` bytes; small
        chunks stay in the CPU cache: 16-32 measured fastest on CPU, larger ones suit a GPU).
    device : torch device for the projections (default: CUDA if available). The output does
        not depend on it beyond float32 rounding; noise is drawn on the CPU.
    progress : called as ``progress(n_done)`` after each chunk (two passes: clean images up to
        ``n_particles``, then noise, again up to ``n_particles``).

    Returns
    -------
    :class:`SimulatedDataset`
    """
    if n_particles < 2:
        raise ValueError(f"n_particles must be >= 2 (two half sets), got {n_particles}")
    if box_size < 8 or box_size % 2:
        raise ValueError(f"box_size must be even and >= 8, got {box_size}")
    if not snr > 0:
        raise ValueError(f"snr must be > 0 (use float('inf') for no noise), got {snr}")
    lo, hi = defocus_range_angstrom
    if not 0 < lo <= hi:
        raise ValueError(f"defocus_range_angstrom must satisfy 0 < low <= high, got {defocus_range_angstrom}")
    t_start = time.perf_counter()
    dev = resolve_device(device)
    out = Path(out_dir)
    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    param_seed, noise_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    gen = torch.Generator().manual_seed(param_seed)
    noise_gen = torch.Generator().manual_seed(noise_seed)
    f64 = torch.float64

    protein = _resolve_model(model, seed)
    radius = float(np.linalg.norm(protein.positions_angstrom, axis=1).max())
    if radius > 0.5 * box_size * pixel_size_angstrom:
        raise ValueError(
            f"the model reaches {radius:.1f} Å from its centre but the box is only "
            f"{box_size * pixel_size_angstrom:.1f} Å wide (box {box_size} x {pixel_size_angstrom} Å)"
        )
    n = int(n_particles)

    # ---- per-particle parameters (CPU float64, rounded to what the star file stores) ----
    def rounded(x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 10**_STAR_DECIMALS) / 10**_STAR_DECIMALS

    quat = torch.randn(n, 4, generator=gen, dtype=f64)
    euler = rounded(matrix_to_euler_relion(quaternion_to_matrix(quat)))
    rotations = euler_relion_to_matrix(euler)
    origins = rounded((torch.rand(n, 2, generator=gen, dtype=f64) * 4 - 2) * pixel_size_angstrom)
    n_mics = math.ceil(n / _PARTICLES_PER_MICROGRAPH)
    mic_defocus = lo + (hi - lo) * torch.rand(n_mics, generator=gen, dtype=f64)
    mic_index = torch.arange(n) // _PARTICLES_PER_MICROGRAPH
    dfu = mic_defocus[mic_index] + (torch.rand(n, generator=gen, dtype=f64) * 200 - 100)
    dfv = dfu - 500 * torch.rand(n, generator=gen, dtype=f64)
    dfu, dfv = rounded(dfu), rounded(dfv)
    dfang = rounded(180 * torch.rand(n, generator=gen, dtype=f64))
    half = torch.ones(n, dtype=torch.int64)
    half[torch.randperm(n, generator=gen)[: n // 2]] = 2
    has_hinge = hinge_max_deg > 0 and protein.moving_domain in protein.domain_labels and len(protein.domain_labels) > 1
    hinge = rounded((torch.rand(n, generator=gen, dtype=f64) * 2 - 1) * hinge_max_deg) if has_hinge else torch.zeros(n, dtype=f64)

    # ---- atoms and the truth map (band-limited analytic density, max 1) ----
    amp64, sig64 = atom_gaussians(protein)
    pos64 = torch.as_tensor(protein.positions_angstrom, dtype=f64)
    truth_map = irfft_centered_3d(gaussians_rfft_3d(pos64, amp64, sig64, box_size, pixel_size_angstrom), box_size)
    amplitude_scale = 1.0 / float(truth_map.max())
    amp64 = amp64 * amplitude_scale
    truth_map = truth_map * amplitude_scale
    write_map(truth / "truth_map.mrc", truth_map.numpy(), pixel_size_angstrom)
    conf_angles = [-hinge_max_deg, hinge_max_deg] if has_hinge else []
    for k, angle in enumerate(conf_angles, start=1):
        moved = protein.conformation(None, angle)
        conf_map = irfft_centered_3d(gaussians_rfft_3d(moved, amp64, sig64, box_size, pixel_size_angstrom), box_size)
        write_map(truth / f"truth_map_conf{k}.mrc", conf_map.numpy(), pixel_size_angstrom)
    mask, domain_masks = _soft_domain_masks(protein, box_size, pixel_size_angstrom)
    write_map(truth / "mask.mrc", mask, pixel_size_angstrom)
    domain_paths = []
    for d, m in zip(protein.domain_labels, domain_masks):
        domain_paths.append(write_map(truth / f"domain_{d}_mask.mrc", m, pixel_size_angstrom))
    model_pdb = write_model_pdb(protein, truth / "model.pdb")

    # ---- images: pass 1 clean (exact signal variance), pass 2 noise ----
    dtype = torch.float32
    amp = amp64.to(dev, dtype)
    sig = sig64.to(dev, dtype)
    pos_neutral = pos64.to(dev, dtype)
    moving = torch.as_tensor(protein.domains == protein.moving_domain, device=dev)
    hinge_point = torch.as_tensor(protein.hinge_point_angstrom, device=dev, dtype=dtype)
    hinge_axis = torch.as_tensor(protein.hinge_axis, device=dev, dtype=dtype)
    freqs = rfft_frequencies_2d(box_size, pixel_size_angstrom, device=dev, dtype=dtype)
    shifts = image_shift_angstrom_from_origin(origins)
    stack_path = out / "particles.mrcs"
    signal_sum = 0.0
    with atomic_path(stack_path, suffix=".mrcs") as tmp:
        with mrcfile.new_mmap(tmp, shape=(n, box_size, box_size), mrc_mode=2, overwrite=True) as mrc:
            mrc.set_image_stack()
            for start in range(0, n, chunk_size):
                sl = slice(start, min(start + chunk_size, n))
                if has_hinge:
                    positions = hinge_rotate(pos_neutral, moving, hinge_point, hinge_axis, hinge[sl].to(dev, dtype))
                else:
                    positions = pos_neutral
                spectrum = project_gaussians_rfft_2d(
                    positions, amp, sig, rotations[sl].to(dev, dtype), shifts[sl].to(dev, dtype), box_size, pixel_size_angstrom
                )
                ctf = ctf_2d(freqs, dfu[sl].to(dev, dtype), dfv[sl].to(dev, dtype), dfang[sl].to(dev, dtype), voltage_kv, cs_mm, amplitude_contrast)
                clean = irfft_centered_2d(spectrum * ctf, box_size)
                signal_sum += float(clean.double().var(dim=(-2, -1), unbiased=False).sum())
                mrc.data[sl] = clean.cpu().numpy()
                if progress is not None:
                    progress(sl.stop)
            signal_variance = signal_sum / n
            noise_std = 0.0 if math.isinf(snr) else math.sqrt(signal_variance / snr)
            for start in range(0, n, chunk_size):
                sl = slice(start, min(start + chunk_size, n))
                noise = torch.randn(sl.stop - sl.start, box_size, box_size, generator=noise_gen, dtype=dtype)
                if noise_std > 0:
                    mrc.data[sl] += (noise_std * noise).numpy()
                if progress is not None:
                    progress(sl.stop)
            mrc.voxel_size = pixel_size_angstrom
            mrc.header.origin = (0.0, 0.0, 0.0)
            mrc.update_header_stats()

    # ---- star files ----
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [float(amplitude_contrast)],
            "rlnSphericalAberration": [float(cs_mm)],
            "rlnVoltage": [float(voltage_kv)],
            "rlnImagePixelSize": [float(pixel_size_angstrom)],
            "rlnImageSize": [int(box_size)],
            "rlnImageDimensionality": [2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
            "rlnMicrographName": [f"micrographs/mic_{int(m) + 1:05d}.mrc" for m in mic_index],
            "rlnAngleRot": euler[:, 0].numpy(),
            "rlnAngleTilt": euler[:, 1].numpy(),
            "rlnAnglePsi": euler[:, 2].numpy(),
            "rlnOriginXAngst": origins[:, 0].numpy(),
            "rlnOriginYAngst": origins[:, 1].numpy(),
            "rlnDefocusU": dfu.numpy(),
            "rlnDefocusV": dfv.numpy(),
            "rlnDefocusAngle": dfang.numpy(),
            "rlnPhaseShift": np.zeros(n),
            "rlnCtfBfactor": np.zeros(n),
            "rlnOpticsGroup": np.ones(n, dtype=int),
            "rlnRandomSubset": half.numpy(),
            "rlnClassNumber": np.ones(n, dtype=int),
        }
    )
    particles_star = write_star_blocks(out / "particles.star", {"optics": optics, "particles": particles})
    truth_particles = particles.assign(rlnGmmHingeAngle=hinge.numpy())
    truth_star = write_star_blocks(truth / "truth_particles.star", {"optics": optics, "particles": truth_particles})
    truth_arrays = dict(
        euler_deg=euler.numpy(),
        rotations=rotations.numpy(),
        origins_angstrom=origins.numpy(),
        hinge_angle_deg=hinge.numpy(),
        half=half.numpy(),
        defocus_u_angstrom=dfu.numpy(),
        defocus_v_angstrom=dfv.numpy(),
        defocus_angle_deg=dfang.numpy(),
    )
    truth_npz = truth / "truth.npz"
    with atomic_path(truth_npz, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                **truth_arrays,
                atom_positions_angstrom=protein.positions_angstrom,
                atom_amplitudes=amp64.numpy(),
                atom_sigmas_angstrom=sig64.numpy(),
                atom_domains=np.asarray(protein.domains),
            )
    parameters = {
        "gmmsession_version": __version__,
        "torch_version": torch.__version__,
        "n_particles": n,
        "box_size": int(box_size),
        "pixel_size_angstrom": float(pixel_size_angstrom),
        "snr": None if math.isinf(snr) else float(snr),
        "snr_definition": "mean over particles of the variance over the box of the CTF-modulated clean image / noise variance",
        "signal_variance": signal_variance,
        "noise_std": noise_std,
        "hinge_max_deg": float(hinge_max_deg) if has_hinge else 0.0,
        "hinge_point_angstrom": [float(v) for v in protein.hinge_point_angstrom],
        "hinge_axis": [float(v) for v in protein.hinge_axis],
        "moving_domain": int(protein.moving_domain),
        "truth_map_conf_hinge_deg": conf_angles,
        "defocus_range_angstrom": [float(lo), float(hi)],
        "particles_per_micrograph": _PARTICLES_PER_MICROGRAPH,
        "voltage_kv": float(voltage_kv),
        "cs_mm": float(cs_mm),
        "amplitude_contrast": float(amplitude_contrast),
        "seed": int(seed),
        "model_source": protein.source,
        "n_atoms": protein.n_atoms,
        "n_residues": protein.n_residues,
        "diameter_angstrom": protein.diameter_angstrom(),
        "atom_sigma_angstrom": ATOM_SIGMA_ANGSTROM,
        "atom_width_model": "sigma = sqrt(atom_sigma^2 + B / (8 pi^2)); mass per element C 1.0, N 1.1, O 1.2, S 2.2, P 2.0",
        "amplitude_scale": amplitude_scale,
        "truth_map_units": "band-limited analytic density, maximum 1; images are sums of voxels along z (relion_project scale)",
        "forward_model": "image = irfft(CTF * analytic projection FT) + white noise; RELION CTF, no phase flip, no envelope",
        "device": str(dev),
        "seconds": time.perf_counter() - t_start,
    }
    parameters_json = truth / "simulation.json"
    with atomic_path(parameters_json, suffix=".json") as tmp:
        tmp.write_text(json.dumps(parameters, indent=2))
    return SimulatedDataset(
        out_dir=out,
        particles_star=particles_star,
        stack=stack_path,
        truth_dir=truth,
        truth_map=truth / "truth_map.mrc",
        mask=truth / "mask.mrc",
        domain_masks=tuple(domain_paths),
        truth_star=truth_star,
        truth_npz=truth_npz,
        model_pdb=model_pdb,
        parameters_json=parameters_json,
        **truth_arrays,
        signal_variance=signal_variance,
        noise_std=noise_std,
    )


def perturb_star_poses(
    star_path: str | os.PathLike, out_path: str | os.PathLike, angle_deg: float, shift_angstrom: float, seed: int = 0
) -> Path:
    """Write a copy of a RELION 3.1 star file with every particle's pose perturbed.

    Each rotation is composed with a rotation of exactly ``angle_deg`` about a random axis
    (``A' = A @ R``), and each origin moves by ``shift_angstrom`` in a random in-plane
    direction; every other column is kept. For refinement exercises and tests: the simulator's
    truth is the unperturbed file. Relative stack paths in ``rlnImageName`` are rewritten
    relative to ``out_path``'s folder, so the copy may be written anywhere.
    """
    from gmmsession.kernels.conventions import euler_relion_to_matrix, matrix_to_euler_relion
    from gmmsession.kernels.rotations import rotvec_to_matrix

    blocks = starfile.read(star_path, always_dict=True)
    df = blocks["particles"].copy()
    rng = np.random.default_rng(seed)
    rot = euler_relion_to_matrix(torch.tensor(df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=np.float64)))
    axis = rng.normal(size=(len(df), 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    euler = matrix_to_euler_relion(rot @ rotvec_to_matrix(torch.tensor(axis * np.deg2rad(angle_deg)))).numpy()
    df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"] = euler[:, 0], euler[:, 1], euler[:, 2]
    phi = rng.uniform(0, 2 * np.pi, len(df))
    df["rlnOriginXAngst"] = df["rlnOriginXAngst"] + shift_angstrom * np.cos(phi)
    df["rlnOriginYAngst"] = df["rlnOriginYAngst"] + shift_angstrom * np.sin(phi)
    df["rlnImageName"] = _rebase_image_names(df["rlnImageName"], Path(star_path).parent, Path(out_path).parent)
    blocks["particles"] = df
    return write_star_blocks(out_path, blocks)


def _rebase_image_names(names: pd.Series, old_dir: Path, new_dir: Path) -> pd.Series:
    """Image names (``N@stack``, or a bare image path) whose relative path resolves from
    ``old_dir``, rewritten to resolve from ``new_dir`` (absolute paths and ``N@`` as written are kept)."""
    from gmmsession.data.io.relion import parse_image_names

    text = names.astype(str).to_numpy()
    stacks, _ = parse_image_names(text, old_dir)
    out = [
        name if os.path.isabs(stack) else name[: len(name) - len(stack)] + os.path.relpath(old_dir.resolve() / stack, new_dir.resolve())
        for name, stack in zip(text, stacks)
    ]
    return pd.Series(out, index=names.index)
