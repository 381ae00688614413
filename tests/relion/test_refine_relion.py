"""Issue 3 acceptance (CI size): after ``refine_global``, RELION reconstructs the refined poses
from ``export_star`` to the same half maps and the same resolution as the session reports."""

import numpy as np
import pytest
import torch

import gmmsession as gs
from gmmsession.algorithms.simulate import perturb_star_poses
from gmmsession.kernels.conventions import euler_relion_to_matrix
from gmmsession.kernels.fsc import fsc_3d, last_shell_above_threshold
from gmmsession.kernels.rotations import geodesic_angle_deg
from tests.conftest import relion_half_maps, requires_relion

PIXEL = 2.0
BOX = 32


def _median_error_deg(particles, truth):
    r = euler_relion_to_matrix(torch.tensor(np.stack([particles[v].values for v in ("rot_deg", "tilt_deg", "psi_deg")], -1)))
    return float(geodesic_angle_deg(r, truth).median())


@requires_relion
@pytest.mark.relion
def test_relion_reconstructs_the_refined_poses_to_our_resolution(tmp_path):
    sim = gs.simulate(tmp_path / "data", n_particles=400, box_size=BOX, pixel_size_angstrom=PIXEL, snr=0.5, hinge_max_deg=0.0, seed=33)
    star = perturb_star_poses(sim.particles_star, tmp_path / "data" / "perturbed.star", angle_deg=4.0, shift_angstrom=3.0, seed=3)
    truth = euler_relion_to_matrix(torch.tensor(sim.euler_deg))
    s = gs.Session.from_star(star)
    s.reconstruct(progress=False)
    s.build_gmm(n_gaussians=300, n_iter=40, progress=False)
    start_error = _median_error_deg(s.particles, truth)
    step = s.refine_global(n_iter=2, mask=sim.mask, gmm_fit_steps=15, chunk_size=200, progress=False)
    # The test needs refined poses to differ from the input: at SNR 1 the first iteration improves.
    assert step.metrics["accepted_iteration"] >= 1
    assert _median_error_deg(s.particles, truth) < start_error

    out = s.export_star(tmp_path / "data" / "refined.star")
    relion = relion_half_maps(out, PIXEL, tmp_path)
    ours = [torch.as_tensor(s.half_maps.sel(half=h).values) for h in (1, 2)]
    # Same gold-standard resolution (unmasked half-map FSC) to within one shell.
    ours_shell = int(last_shell_above_threshold(fsc_3d(*ours)))
    relion_shell = int(last_shell_above_threshold(fsc_3d(*relion)))
    assert abs(ours_shell - relion_shell) <= 1, (ours_shell, relion_shell)
    # Same poses and data: each half map equals RELION's where signal dominates (half-map FSC >= 0.5).
    # Where noise dominates the two programs' different interpolation kernels give different noise
    # maps (200 particles per half: measured 0.92 at the 0.143 shell), which is not a pose question.
    signal = int(last_shell_above_threshold(fsc_3d(*ours), 0.5))
    assert signal >= 6
    for a, b in zip(ours, relion):
        assert fsc_3d(a, b)[: signal + 1].min() >= 0.98
