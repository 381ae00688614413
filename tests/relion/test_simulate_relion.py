"""End-to-end convention check: our simulator against ``relion_project --ctf`` of the truth map."""

import math
import subprocess

import mrcfile
import numpy as np
import pytest

from gmmsession.algorithms.simulate import simulate
from tests.conftest import requires_relion

N = 24
BOX = 64


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=(1, 2), keepdims=True)
    b = b - b.mean(axis=(1, 2), keepdims=True)
    return (a * b).sum(axis=(1, 2)) / np.sqrt((a * a).sum(axis=(1, 2)) * (b * b).sum(axis=(1, 2)))


@requires_relion
@pytest.mark.relion
def test_simulated_images_match_relion_project(tmp_path):
    ds = simulate(tmp_path, n_particles=N, box_size=BOX, pixel_size_angstrom=1.5, snr=math.inf, hinge_max_deg=0.0, seed=3)
    out = subprocess.run(
        ["relion_project", "--i", "truth/truth_map.mrc", "--ang", "particles.star", "--ctf", "--o", "relion_proj"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    ours = mrcfile.read(ds.stack).astype(np.float64)
    theirs = mrcfile.read(tmp_path / "relion_proj.mrcs").astype(np.float64)
    assert theirs.shape == ours.shape
    corr = _correlations(ours, theirs)
    # RELION projects the voxelised, band-limited truth map by trilinear interpolation of its
    # padded 3D transform inside the Nyquist sphere; we project the atoms analytically on the
    # full square grid. Measured here: 0.997-0.999. A wrong Euler, origin-sign, CTF-sign or
    # astigmatism convention drops this far below 0.98 (controls below).
    assert corr.min() >= 0.98, corr
    # Same scale: relion_project and the simulator both give sums of voxels along z.
    ratio = theirs.std(axis=(1, 2)) / ours.std(axis=(1, 2))
    assert np.allclose(ratio, 1.0, atol=0.03), ratio
    # Controls that the check can fail: swapped x/y axes (the zyx-vs-xyz mistake) and another
    # particle's image.
    assert _correlations(ours.transpose(0, 2, 1), theirs).max() < 0.9
    assert _correlations(np.roll(ours, 1, axis=0), theirs).max() < 0.9
