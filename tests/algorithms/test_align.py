"""Per-particle GMM pose refinement: convergence, do no harm, batch independence, half sets."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from gmmsession.algorithms.align import AlignConfig, PoseUpdate, refine_poses, refine_poses_chunk
from gmmsession.algorithms.protein import build_protein
from gmmsession.algorithms.simulate import atom_gaussians
from gmmsession.data.bridge import ParticleTensors
from gmmsession.data.chunks import ParticleChunk
from gmmsession.kernels.ctf import ctf_2d
from gmmsession.kernels.fourier import irfft_centered_2d, rfft_frequencies_2d
from gmmsession.kernels.gmm import project_gaussians_rfft_2d
from gmmsession.kernels.rotations import geodesic_angle_deg, quaternion_to_matrix, rotvec_to_matrix

BOX = 64
PIXEL = 1.5
N = 24


@pytest.fixture(scope="module")
def clean_case():
    """Clean CTF-modulated projections of the procedural protein's atoms, truth and a 3 deg / 1 px start."""
    return _clean_case(PIXEL, seed=1)


def _clean_case(pixel: float, seed: int) -> dict:
    protein = build_protein(seed=0)
    amp, sig = atom_gaussians(protein)
    pos = torch.as_tensor(protein.positions_angstrom)
    f64 = torch.float64
    gen = torch.Generator().manual_seed(seed)
    rot = quaternion_to_matrix(torch.randn(N, 4, generator=gen, dtype=f64))
    origin = (torch.rand(N, 2, generator=gen, dtype=f64) * 4 - 2) * pixel
    dfu = 10000 + 10000 * torch.rand(N, generator=gen, dtype=f64)
    dfv = dfu - 300
    dfang = 180 * torch.rand(N, generator=gen, dtype=f64)
    freqs = rfft_frequencies_2d(BOX, pixel, dtype=f64)
    spectra = project_gaussians_rfft_2d(pos, amp, sig, rot, -origin, BOX, pixel)
    images = irfft_centered_2d(spectra * ctf_2d(freqs, dfu, dfv, dfang, 300.0, 2.7, 0.1), BOX).float()
    axis = torch.nn.functional.normalize(torch.randn(N, 3, generator=gen, dtype=f64), dim=-1)
    start_rot = rotvec_to_matrix(axis * math.radians(3.0)) @ rot
    direction = torch.nn.functional.normalize(torch.randn(N, 2, generator=gen, dtype=f64), dim=-1)
    start_origin = origin + direction * pixel
    z = torch.zeros(N)
    params = ParticleTensors(
        rotation=start_rot.float(), origin_angstrom=start_origin.float(),
        defocus_u_angstrom=dfu.float(), defocus_v_angstrom=dfv.float(), defocus_angle_deg=dfang.float(),
        phase_shift_deg=z, ctf_bfactor_angstrom2=z, ctf_scale=z + 1, voltage_kv=z + 300, cs_mm=z + 2.7,
        amplitude_contrast=z + 0.1, pixel_size_angstrom=z + pixel, box_size=torch.full((N,), BOX),
    )
    gmm = (pos.float(), amp.float(), sig.float())
    return dict(images=images, params=params, gmm=gmm, rot=rot, origin=origin)


def _subset(params: ParticleTensors, index) -> ParticleTensors:
    return ParticleTensors(**{k: v[index] for k, v in vars(params).items()})


def _to(params: ParticleTensors, device) -> ParticleTensors:
    return ParticleTensors(**{k: v.to(device) for k, v in vars(params).items()})


CONFIG = AlignConfig(max_resolution_angstrom=4.0)


@pytest.mark.parametrize("scoring,band_average", [("frc", "ring"), ("ctf_exact", "ring"), ("ctf_exact", "pooled")])
def test_converges_from_3deg_1px(clean_case, device, scoring, band_average):
    c = clean_case
    config = AlignConfig(max_resolution_angstrom=4.0, scoring=scoring, band_average=band_average)
    gmm = tuple(t.to(device) for t in c["gmm"])
    up = refine_poses_chunk(c["images"].to(device), _to(c["params"], device), *gmm, PIXEL, config)
    err = geodesic_angle_deg(up.rotation.cpu().double(), c["rot"])
    start_err = geodesic_angle_deg(c["params"].rotation.double(), c["rot"])
    shift_err = (up.origin_angstrom.cpu().double() - c["origin"]).norm(dim=-1)
    assert float(start_err.median()) == pytest.approx(3.0, abs=1e-3)
    assert float(err.median()) < 0.5
    assert float(shift_err.median()) < 0.3 * PIXEL
    # Do no harm: the returned pose is the best one seen, never worse than the start.
    assert bool((up.score >= up.initial_score).all())
    assert float((up.score - up.initial_score).mean()) > 0.1
    # Bookkeeping of the changes.
    torch.testing.assert_close(
        up.angle_change_deg.cpu().double(), geodesic_angle_deg(c["params"].rotation.double(), up.rotation.cpu().double()),
        atol=1e-3, rtol=0,  # float32 matrices
    )
    torch.testing.assert_close(
        up.shift_change_angstrom.cpu(), (up.origin_angstrom.cpu() - c["params"].origin_angstrom).norm(dim=-1), atol=1e-5, rtol=0
    )


def test_results_do_not_depend_on_batch_size(clean_case):
    c = clean_case
    sel = slice(0, 8)
    images, params = c["images"][sel], _subset(c["params"], sel)
    runs = [
        refine_poses_chunk(images, params, *c["gmm"], PIXEL, AlignConfig(max_resolution_angstrom=4.0, batch_size=bs))
        for bs in (1, 4, 16)
    ]
    for other in runs[1:]:
        # float32 batched matmuls round differently at another batch size (measured 3e-6 deg); 1e-4 deg is far below any
        # pose change the optimiser makes (0.1-1 deg per step).
        assert float(geodesic_angle_deg(runs[0].rotation.double(), other.rotation.double()).max()) < 1e-4
        torch.testing.assert_close(other.origin_angstrom, runs[0].origin_angstrom, atol=1e-4, rtol=0)
        torch.testing.assert_close(other.score, runs[0].score, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_give_the_eager_result(clean_case):
    c = clean_case
    images, params = c["images"].cuda(), _to(c["params"], "cuda")
    gmm = tuple(t.cuda() for t in c["gmm"])
    length = 15.0  # Å, the shift's unit (module docstring of align)
    # batch 5 over 24 particles: one eager batch, the capture, replays, and an eager partial batch.
    config = AlignConfig(max_resolution_angstrom=4.0, batch_size=5, length_scale_angstrom=length)
    runs = [refine_poses_chunk(images, params, *gmm, PIXEL, dataclasses.replace(config, cuda_graphs=graphs)) for graphs in (False, True)]
    # The same kernels on the same inputs: equal up to the nondeterministic order of atomic adds (scatter) in float32.
    # Most particles agree to float rounding (median 1-2e-5 deg in 11 runs on an H100). One whose gradient has fallen to
    # float noise can take a different late step, since Adam divides each step by the gradient's RMS: at most the size of
    # a late step, learning_rate * final_lr_fraction rad (0.11 deg; the largest measured: 5e-5 to 3e-4 deg, once 1.3e-3).
    angle = geodesic_angle_deg(runs[0].rotation.double().cpu(), runs[1].rotation.double().cpu())
    late_step = config.learning_rate * config.final_lr_fraction
    assert float(angle.median()) < 2e-4
    assert float(angle.max()) < math.degrees(late_step)
    shift = (runs[1].origin_angstrom - runs[0].origin_angstrom).norm(dim=-1).cpu()
    assert float(shift.median()) < 1e-3
    assert float(shift.max()) < late_step * length
    torch.testing.assert_close(runs[1].score, runs[0].score, atol=1e-5, rtol=0)
    torch.testing.assert_close(runs[1].initial_score, runs[0].initial_score, atol=1e-6, rtol=0)


def test_trust_region_limits_the_change(clean_case):
    c = clean_case
    sel = slice(0, 6)
    config = AlignConfig(max_resolution_angstrom=4.0, max_angle_deg=1.0, max_shift_angstrom=0.5)
    up = refine_poses_chunk(c["images"][sel], _subset(c["params"], sel), *c["gmm"], PIXEL, config)
    assert float(up.angle_change_deg.max()) <= 1.0 + 1e-3  # float32 matrices
    assert float(up.shift_change_angstrom.max()) <= 0.5 + 1e-4
    assert float(up.angle_change_deg.max()) > 0.5  # the limit was reached, so it was tested


def test_zero_steps_returns_start(clean_case):
    c = clean_case
    sel = slice(0, 3)
    up = refine_poses_chunk(c["images"][sel], _subset(c["params"], sel), *c["gmm"], PIXEL, AlignConfig(n_steps=0))
    torch.testing.assert_close(up.rotation, c["params"].rotation[sel], atol=1e-6, rtol=0)
    torch.testing.assert_close(up.score, up.initial_score)


def test_each_half_only_sees_its_own_gmm(clean_case):
    c = clean_case
    n = 12
    halves = torch.tensor([1, 2] * (n // 2))
    positions = np.arange(100, 100 + n)

    def chunks():
        for start in (0, 5):  # two chunks of unequal size, halves interleaved
            stop = 5 if start == 0 else n
            yield ParticleChunk(
                positions=positions[start:stop], images=c["images"][start:stop],
                params=_subset(c["params"], slice(start, stop)), halves=halves[start:stop],
            )

    gen = torch.Generator().manual_seed(9)
    garbage = (torch.randn(300, 3, generator=gen) * 20, torch.rand(300, generator=gen), 1 + torch.rand(300, generator=gen))
    seen = []
    good = refine_poses(chunks(), {1: c["gmm"], 2: c["gmm"]}, CONFIG, progress=seen.append)
    bad = refine_poses(chunks(), {1: c["gmm"], 2: garbage}, CONFIG)
    assert isinstance(good, PoseUpdate) and seen == [5, n]
    assert np.array_equal(good.positions, positions)
    one = (halves == 1)
    torch.testing.assert_close(bad.rotation[one], good.rotation[one], atol=0, rtol=0)
    torch.testing.assert_close(bad.score[one], good.score[one], atol=0, rtol=0)
    assert not torch.allclose(bad.rotation[~one], good.rotation[~one])  # half 2 did use the garbage
    # Stream order is kept: half-1 particles match a direct per-half call.
    direct = refine_poses_chunk(c["images"][:n][one], _subset(c["params"], torch.nonzero(one).squeeze(-1)), *c["gmm"], PIXEL, CONFIG)
    torch.testing.assert_close(good.rotation[one], direct.rotation, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="half set 2"):
        refine_poses(chunks(), {1: c["gmm"]}, CONFIG)


def test_stream_aligns_each_particle_on_its_own_pixel_size(clean_case):
    """Optics groups of one box may differ in pixel size: in one chunk, particles imaged at
    1.5 and at 1.65 Å/px (10 % larger) each converge, because each is scored on its own grid.
    Scored on 1.5 Å/px, the 1.65 Å/px particles would see a 10 % smaller molecule."""
    c, d = clean_case, _clean_case(1.1 * PIXEL, seed=2)
    sel = slice(0, 8)
    both = {k: torch.cat([c["params"].__dict__[k][sel], d["params"].__dict__[k][sel]]) for k in vars(c["params"])}
    chunk = ParticleChunk(
        positions=np.arange(16), images=torch.cat([c["images"][sel], d["images"][sel]]),
        params=ParticleTensors(**both), halves=torch.tensor([1, 2] * 8),
    )
    up = refine_poses([chunk], {1: c["gmm"], 2: c["gmm"]}, CONFIG)
    truth = torch.cat([c["rot"][sel], d["rot"][sel]])
    err = geodesic_angle_deg(up.rotation.double(), truth)
    assert float(err[:8].median()) < 0.5 and float(err[8:].median()) < 0.5  # 3 deg at the start


def test_config_and_shape_checks(clean_case):
    c = clean_case
    with pytest.raises(ValueError, match="scoring"):
        AlignConfig(scoring="cc")
    with pytest.raises(ValueError, match="images"):
        refine_poses_chunk(c["images"][0], c["params"], *c["gmm"], PIXEL)
    with pytest.raises(ValueError, match="poses"):
        refine_poses_chunk(c["images"][:2], c["params"], *c["gmm"], PIXEL)
