"""Issue acceptance: export_star output reconstructs in RELION to the same map as the input star."""

import subprocess

import numpy as np
import pytest

import gmmsession as gs
from gmmsession.data.io.mrc import read_map
from tests.conftest import requires_relion


def _relion_reconstruct(star, out, cwd):
    subprocess.run(
        ["relion_reconstruct", "--i", str(star), "--o", str(out), "--ctf", "--subset", "1", "--angpix", "3.0"],
        check=True, capture_output=True, cwd=cwd, timeout=300,
    )
    return read_map(out, pixel_size_angstrom=3.0)[0]


@requires_relion
@pytest.mark.relion
def test_exported_star_reconstructs_to_the_input_map(tmp_path):
    sim = gs.simulate(tmp_path / "data", n_particles=300, box_size=32, pixel_size_angstrom=3.0, snr=1.0, seed=4)
    s = gs.Session.from_star(sim.particles_star)
    # Reverse the particle order in the session: export must match by identity, not by order.
    s._set.particles = s.particles.isel(particle=slice(None, None, -1))
    out = s.export_star(tmp_path / "data" / "exported.star")
    a = _relion_reconstruct(sim.particles_star, tmp_path / "from_input.mrc", sim.particles_star.parent)
    b = _relion_reconstruct(out, tmp_path / "from_export.mrc", sim.particles_star.parent)
    # Poses are written with full precision, so RELION sees the same numbers: equal to float32 round-off.
    np.testing.assert_allclose(b, a, atol=1e-5 * np.abs(a).max())
