"""Symmetry operators, expansion and symmetric reconstruction against RELION 3.1's own programs."""

import re
import shutil
import subprocess

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from gmmsession.algorithms.reconstruct import ReconstructConfig, reconstruct_half_maps
from gmmsession.algorithms.symmetry import expand_symmetry
from gmmsession.kernels.conventions import euler_relion_to_matrix
from gmmsession.kernels.fsc import fsc_3d
from gmmsession.kernels.symmetry import symmetry_operators
from tests.conftest import requires_relion
from tests.relion.test_reconstruct_relion import particle_tensors_from_star, smooth_map, tables

BOX, PIXEL, N = 48, 2.0, 300
GROUPS = ["C2", "C3", "C7", "D2", "D3", "D5", "T", "O", "I", "I1", "I2", "I3", "I4"]

needs_tools = pytest.mark.skipif(
    shutil.which("relion_refine") is None or shutil.which("relion_particle_symmetry_expand") is None,
    reason="relion_refine / relion_particle_symmetry_expand are not installed",
)


def relion_operators(work, group: str) -> torch.Tensor:
    """The matrices ``relion_refine --sym G --print_symmetry_ops`` prints (5 significant digits)."""
    out = subprocess.run(
        ["relion_refine", "--sym", group, "--print_symmetry_ops"], cwd=work, check=True, capture_output=True, text=True
    ).stdout
    lines = out.splitlines()
    ops = [
        [[float(v) for v in lines[i + j].split()] for j in (1, 2, 3)]
        for i, line in enumerate(lines)
        if re.match(r"\s*R\(\d+\)=", line)
    ]
    return torch.tensor(ops, dtype=torch.float64)


def set_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest distance from a matrix of either set to its nearest in the other (max abs entry)."""
    d = (a[:, None] - b[None]).abs().amax((-1, -2))
    return max(float(d.min(1).values.max()), float(d.min(0).values.max()))


@requires_relion
@needs_tools
@pytest.mark.relion
@pytest.mark.parametrize("group", GROUPS)
def test_operators_match_relion(tmp_path, group):
    ours = symmetry_operators(group)
    theirs = relion_operators(tmp_path, group)
    assert ours.shape == theirs.shape
    # RELION prints 5-8 significant digits: measured <= 5e-6.
    assert set_distance(ours, theirs) < 2e-5


@requires_relion
@needs_tools
@pytest.mark.relion
@pytest.mark.parametrize("group", ["C3", "D3", "T", "I"])
def test_expansion_matches_relion_particle_symmetry_expand(tmp_path, group):
    from gmmsession.data.io.relion import read_relion_star

    t = tables(5, seed=7)
    parts = t["particles"]
    parts["rlnImageName"] = [f"{i + 1:06d}@stack.mrcs" for i in range(len(parts))]
    starfile.write(t, tmp_path / "in.star", overwrite=True)
    with mrcfile.new(tmp_path / "stack.mrcs") as m:  # the reader wants a stack to exist
        m.set_data(np.zeros((len(parts), 48, 48), np.float32))
    subprocess.run(
        ["relion_particle_symmetry_expand", "--i", "in.star", "--o", "out.star", "--sym", group],
        cwd=tmp_path, check=True, capture_output=True,
    )
    relion = starfile.read(tmp_path / "out.star")["particles"]
    ours = expand_symmetry(read_relion_star(tmp_path / "in.star").particles, group)
    n_ops = symmetry_operators(group).shape[0]
    assert len(relion) == ours.sizes["particle"] == n_ops * len(parts)
    angles = lambda a: euler_relion_to_matrix(torch.as_tensor(np.asarray(a, dtype=np.float64)))  # noqa: E731
    for i, name in enumerate(parts["rlnImageName"]):
        rows = relion[relion["rlnImageName"] == name]
        theirs = angles(rows[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
        mine = ours.isel(particle=np.nonzero(ours["symmetry_source_particle"].values == i)[0])
        mine_m = angles(np.stack([mine[v].values for v in ("rot_deg", "tilt_deg", "psi_deg")], -1))
        # Same poses as sets (RELION orders the operators of D, T, O, I differently); RELION
        # writes 6 decimals of degrees and its operators carry float round-off: measured <= 5e-7.
        assert set_distance(mine_m, theirs) < 1e-5, (group, i)
        # Origins and half set are the source particle's, as RELION keeps them.
        np.testing.assert_allclose(mine["origin_x_angstrom"].values, rows["rlnOriginXAngst"].to_numpy(), atol=1e-5)
        np.testing.assert_array_equal(mine["half"].values, rows["rlnRandomSubset"].to_numpy())


@requires_relion
@pytest.mark.relion
def test_c3_reconstruction_matches_relion_reconstruct_sym(tmp_path):
    with mrcfile.new(tmp_path / "map.mrc") as m:
        m.set_data(smooth_map(BOX))
        m.voxel_size = PIXEL
    starfile.write(tables(N, seed=5), tmp_path / "ang.star", overwrite=True)
    subprocess.run(
        ["relion_project", "--i", "map.mrc", "--o", "clean", "--ang", "ang.star", "--ctf"],
        cwd=tmp_path, check=True, capture_output=True,
    )
    relion = []
    for subset in (1, 2):
        subprocess.run(
            ["relion_reconstruct", "--i", "clean.star", "--o", f"half{subset}.mrc", "--ctf", "--subset", str(subset),
             "--sym", "C3"],
            cwd=tmp_path, check=True, capture_output=True,
        )
        relion.append(mrcfile.read(tmp_path / f"half{subset}.mrc").astype(np.float32))
    relion = torch.from_numpy(np.stack(relion))
    t = starfile.read(tmp_path / "clean.star")
    parts = t["particles"]
    params = particle_tensors_from_star(t["optics"], parts)
    halves = torch.as_tensor(parts["rlnRandomSubset"].to_numpy(copy=True))
    images = torch.from_numpy(mrcfile.read(tmp_path / "clean.mrcs").astype(np.float32))
    ours = reconstruct_half_maps([(images, params, halves)], BOX, PIXEL, ReconstructConfig(symmetry="C3"))
    plain = reconstruct_half_maps([(images, params, halves)], BOX, PIXEL, ReconstructConfig())
    fsc = fsc_3d(ours, relion)
    k = int(0.8 * BOX // 2)
    # RELION symmetrises the summed Fourier grids by interpolated rotation (the same trilinear
    # weights spread once more), we insert each image at A @ S_k; both normalise slightly
    # differently (see test_reconstruct_relion). Clean images: signal in every shell, so the
    # comparison covers 0.8 Nyquist; measured min 0.994 (without --sym on our side: mean 0.58).
    assert float(fsc[:, : k + 1].min()) >= 0.99, fsc
    # The symmetry matters: without it the maps differ (the test can fail).
    assert float(fsc_3d(plain, relion)[:, 2 : k + 1].mean()) < 0.95
    scale = float((ours * relion).sum() / (relion * relion).sum())
    assert abs(scale - 1) < 0.1, scale
