"""A star file written by RELION 3.1's relion_particle_symmetry_expand loads as the set our own
expand_symmetry builds, and export_star writes RELION's rows back."""

import shutil
import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from gmmsession import Session
from gmmsession.algorithms.symmetry import expand_symmetry
from gmmsession.kernels.conventions import euler_relion_to_matrix
from tests.conftest import requires_relion
from tests.relion.test_reconstruct_relion import tables

N, K = 6, 3

needs_expand = pytest.mark.skipif(
    shutil.which("relion_particle_symmetry_expand") is None, reason="relion_particle_symmetry_expand is not installed"
)
needs_star_handler = pytest.mark.skipif(
    shutil.which("relion_star_handler") is None, reason="relion_star_handler is not installed"
)


def rotations(ds) -> torch.Tensor:
    euler = np.stack([ds[v].values for v in ("rot_deg", "tilt_deg", "psi_deg")], -1).astype(np.float64)
    return euler_relion_to_matrix(torch.as_tensor(euler))


def expand_with_relion(tmp_path) -> None:
    """in.star (N particles, a stack of N images) and RELION's C3 expansion of it, out.star."""
    t = tables(N, seed=11)
    parts = t["particles"]
    parts["rlnImageName"] = [f"{i + 1:06d}@stack.mrcs" for i in range(N)]
    parts["rlnMicrographName"] = [f"mic{i // 2}.mrc" for i in range(N)]
    parts["rlnCoordinateX"] = 100.0 + 37 * np.arange(N)
    parts["rlnCoordinateY"] = 900.0 - 53 * np.arange(N)
    starfile.write(t, tmp_path / "in.star", overwrite=True)
    with mrcfile.new(tmp_path / "stack.mrcs") as m:  # the reader looks for the stack
        m.set_data(np.zeros((N, 48, 48), np.float32))
    subprocess.run(
        ["relion_particle_symmetry_expand", "--i", "in.star", "--o", "out.star", "--sym", "C3"],
        cwd=tmp_path, check=True, capture_output=True, timeout=120,
    )


@requires_relion
@needs_expand
@pytest.mark.relion
def test_relion_expanded_star_loads_as_our_expansion(tmp_path):
    expand_with_relion(tmp_path)
    parts = starfile.read(tmp_path / "in.star")["particles"]
    relion = starfile.read(tmp_path / "out.star")["particles"]
    # RELION writes each particle's copies consecutively, the unchanged row (identity) first.
    np.testing.assert_array_equal(relion["rlnImageName"], np.repeat(parts["rlnImageName"].to_numpy(), K))

    s = Session.from_star(tmp_path / "out.star")
    got = s.particles
    ours = expand_symmetry(Session.from_star(tmp_path / "in.star").particles, "C3")
    assert got.sizes["particle"] == ours.sizes["particle"] == N * K
    assert got.attrs["symmetry_expanded"].startswith("unknown (3 copies per particle in out.star; ")
    for v in ("symmetry_source_particle", "symmetry_operator", "half", "stack_index"):
        np.testing.assert_array_equal(got[v].values, ours[v].values, err_msg=v)
    np.testing.assert_allclose(got["origin_x_angstrom"].values, ours["origin_x_angstrom"].values, rtol=0, atol=1e-5)
    # Copy by copy (RELION's C3 operators come in our order), the same rotation. RELION rewrites
    # the whole file with 12-character fields, e.g. -72.103719 -> -72.10372 (the identity copy is
    # rounded too): up to 5e-6 degrees per angle, so matrix entries differ by up to ~1e-7;
    # RELION's operators (cos/sin of 120 degrees in double) add ~1e-15. 1e-5 is 100x that and
    # 1e5x below a wrong operator (0.87 for a 120-degree error). Measured: 1.1e-7.
    diff = (rotations(got) - rotations(ours)).abs().amax((-1, -2))
    assert float(diff.max()) < 1e-5, diff
    # The test can fail: the copies' rotations are 120 degrees apart.
    assert float((rotations(got)[0] - rotations(got)[1]).abs().max()) > 0.5

    # export_star of the loaded session writes RELION's rows back: names, angles, every column.
    back = starfile.read(s.export_star(tmp_path / "back.star"))["particles"]
    np.testing.assert_array_equal(back["rlnImageName"], relion["rlnImageName"])
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
        np.testing.assert_array_equal(back[col].to_numpy(), relion[col].to_numpy(), err_msg=col)
    pd.testing.assert_frame_equal(back, relion)


#: The class of each of RELION's 18 rows (6 particles x 3 copies) in a pretend focused classification;
#: selecting class 2 keeps 1, 3, 2, 0, 1 and 2 copies of the particles.
CLASSES = [2, 1, 1, 2, 2, 2, 1, 2, 2, 1, 1, 1, 1, 1, 2, 2, 1, 2]


@requires_relion
@needs_expand
@needs_star_handler
@pytest.mark.relion
def test_relion_selected_class_of_an_expanded_set_loads_and_exports(tmp_path):
    """Expand (C3), classify (a fake rlnClassNumber and per-row scores), select class 2 with
    relion_star_handler: particles keep 0 to 3 copies; the subset loads and exports row for row."""
    expand_with_relion(tmp_path)
    blocks = starfile.read(tmp_path / "out.star")
    rng = np.random.default_rng(4)
    blocks["particles"]["rlnClassNumber"] = CLASSES
    blocks["particles"]["rlnLogLikeliContribution"] = rng.normal(0, 1e4, N * K)
    blocks["particles"]["rlnMaxValueProbDistribution"] = rng.uniform(0, 1, N * K)
    starfile.write(blocks, tmp_path / "classified.star", overwrite=True)
    subprocess.run(
        ["relion_star_handler", "--i", "classified.star", "--o", "subset.star",
         "--select", "rlnClassNumber", "--minval", "2", "--maxval", "2"],
        cwd=tmp_path, check=True, capture_output=True, timeout=120,
    )
    relion = starfile.read(tmp_path / "subset.star")["particles"]
    keep = np.flatnonzero(np.asarray(CLASSES) == 2)
    np.testing.assert_array_equal(relion["rlnImageName"], blocks["particles"]["rlnImageName"].to_numpy()[keep])
    counts = relion["rlnImageName"].value_counts(sort=False).to_numpy()
    np.testing.assert_array_equal(counts, [1, 3, 2, 1, 2])  # unequal copies per particle, 1 included

    s = Session.from_star(tmp_path / "subset.star")
    p = s.particles
    assert p.sizes["particle"] == len(keep) == 9
    assert p.attrs["symmetry_expanded"].startswith("unknown (1 to 3 copies per particle in subset.star; ")
    np.testing.assert_array_equal(p["symmetry_source_particle"].values, [0, 1, 1, 1, 2, 2, 3, 4, 4])
    np.testing.assert_array_equal(p["symmetry_operator"].values, [0, 0, 1, 2, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(p["stack_index"].values, keep // K)
    np.testing.assert_array_equal(p["half"].values, relion["rlnRandomSubset"].to_numpy())
    np.testing.assert_array_equal(p["rot_deg"].values, relion["rlnAngleRot"].to_numpy())
    # The copies of a particle differ in the per-copy score (else the test proves nothing).
    assert relion["rlnLogLikeliContribution"].iloc[1:4].nunique() == 3

    back = starfile.read(s.export_star(tmp_path / "back.star"))["particles"]
    pd.testing.assert_frame_equal(back, relion)
