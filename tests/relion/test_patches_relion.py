"""Issue 4 acceptance (CI size): each patch's exported star reconstructs in RELION to that patch's half maps."""

import pytest
import torch

import gmmsession as gs
from gmmsession.algorithms.simulate import perturb_star_poses
from gmmsession.kernels.fsc import fsc_3d, last_shell_above_threshold
from tests.conftest import relion_half_maps, requires_relion

PIXEL = 2.0


@requires_relion
@pytest.mark.relion
def test_each_patch_star_reconstructs_to_the_patch_maps(tmp_path):
    sim = gs.simulate(tmp_path / "data", n_particles=300, box_size=32, pixel_size_angstrom=PIXEL, snr=0.5, hinge_max_deg=8.0, seed=8)
    star = perturb_star_poses(sim.particles_star, tmp_path / "data" / "perturbed.star", angle_deg=3.0, shift_angstrom=2.0, seed=1)
    s = gs.Session.from_star(star)
    s.reconstruct(progress=False)
    s.build_gmm(n_gaussians=200, n_iter=30, progress=False)
    p = s.patches(k=2)
    p.refine(n_iter=1, solvent_mask=sim.mask, gmm_fit_steps=10, chunk_size=150, progress=False)
    for i in (0, 1):
        out = p.export_star(i, tmp_path / "data" / f"patch{i}.star")
        relion = relion_half_maps(out, PIXEL, tmp_path, prefix=f"patch{i}")
        ours = [torch.as_tensor(p.results[i].half_maps.sel(half=h).values) for h in (1, 2)]
        # Where signal dominates (half-map FSC >= 0.5) the maps agree. With 150 particles per half
        # at box 32 each half map still holds much noise there, and the two programs'
        # interpolation kernels make different noise maps (measured 0.973 at that shell; 0.99+
        # below it), hence 0.95.
        signal = int(last_shell_above_threshold(fsc_3d(*ours), 0.5))
        assert signal >= 5
        for a, b in zip(ours, relion):
            assert fsc_3d(a, b)[: signal + 1].min() >= 0.95
        # The gold-standard FSC curves agree shell by shell (measured: at most 0.033 apart). The
        # 0.143 crossing itself is not compared: here the curves run flat near 0.143 for three
        # shells (0.133-0.166), so float-level differences move the crossing by two shells.
        assert (fsc_3d(*ours) - fsc_3d(*relion)).abs().max() <= 0.06
