"""Star files written by relion_particle_symmetry_expand load as a symmetry-expanded set
(the set Session.expand_symmetry builds in memory) and export back row by row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile

from gmmsession import Session
from gmmsession.algorithms.symmetry import expand_symmetry
from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.io.export import export_star
from gmmsession.data.io.relion import read_relion_star

from .synth import optics_table, particles_table, random_images, write_stack

N, K = 4, 3
ANGLES = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]


def expand_table(df: pd.DataFrame, k: int = K) -> pd.DataFrame:
    """What relion_particle_symmetry_expand --sym Ck writes: each row, then its copies with rot + 360 j / k
    (A @ Rz(360 j / k) in RELION's ZYZ convention), consecutively, every other column verbatim."""
    out = df.loc[np.repeat(df.index.to_numpy(), k)].reset_index(drop=True)
    j = np.tile(np.arange(k), len(df))
    out["rlnAngleRot"] = (out["rlnAngleRot"] + 360.0 * j / k + 180.0) % 360.0 - 180.0
    return out


def write_set(tmp_path, df: pd.DataFrame, name: str = "expanded.star"):
    write_stack(tmp_path / "s.mrcs", random_images(N, 16))
    star = tmp_path / name
    starfile.write({"optics": optics_table(), "particles": df}, star, overwrite=True)
    return star


def source_table() -> pd.DataFrame:
    return particles_table([f"{i + 1:06d}@s.mrcs" for i in range(N)], seed=3)


def test_expanded_file_loads_as_expanded_set(tmp_path):
    src = source_table()
    star = write_set(tmp_path, expand_table(src))
    p = read_relion_star(star).particles
    assert p.sizes["particle"] == N * K
    np.testing.assert_array_equal(p["symmetry_source_particle"].values, np.repeat(np.arange(N), K))
    np.testing.assert_array_equal(p["symmetry_operator"].values, np.tile(np.arange(K), N))
    # Half sets, images and CTF are the source particle's; the angles are each row's own.
    np.testing.assert_array_equal(p["half"].values, np.repeat(src["rlnRandomSubset"].to_numpy(), K))
    np.testing.assert_array_equal(p["stack_index"].values, np.repeat(np.arange(N), K))
    written = starfile.read(star)["particles"]  # (starfile rounds to 6 decimals)
    np.testing.assert_array_equal(p["defocus_u_angstrom"].values, written["rlnDefocusU"].to_numpy())
    np.testing.assert_array_equal(np.ptp(p["defocus_u_angstrom"].values.reshape(N, K), axis=1), 0)
    np.testing.assert_array_equal(p["rot_deg"].values, written["rlnAngleRot"].to_numpy())
    assert (np.ptp(p["rot_deg"].values.reshape(N, K), axis=1) > 100).all()
    assert p.attrs["half_source"] == "file"
    assert p.attrs["symmetry_expanded"] == f"unknown ({K} copies per particle in expanded.star)"
    assert pd.Series(p["particle_key"].values).is_unique
    # The same variables as the in-memory expansion of the unexpanded file.
    plain = read_relion_star(write_set(tmp_path, src, "plain.star")).particles
    ours = expand_symmetry(plain, "C3")
    assert set(p.data_vars) == set(ours.data_vars)
    for v in ("symmetry_source_particle", "symmetry_operator", "half", "origin_x_angstrom", "stack_index"):
        np.testing.assert_array_equal(p[v].values, ours[v].values, err_msg=v)


def test_not_consecutive_copies(tmp_path):
    """A stable sort (here: by half set) separates the groups; the copies keep their order."""
    exp = expand_table(source_table())
    shuffled = exp.sort_values("rlnRandomSubset", kind="stable").reset_index(drop=True)
    star = write_set(tmp_path, shuffled)
    shuffled = starfile.read(star)["particles"]
    p = read_relion_star(star).particles
    names = shuffled["rlnImageName"].to_numpy()
    first = {name: i for i, name in reversed(list(enumerate(pd.unique(names))))}
    np.testing.assert_array_equal(p["symmetry_source_particle"].values, [first[x] for x in names])
    np.testing.assert_array_equal(p["symmetry_operator"].values, np.tile(np.arange(K), N))
    np.testing.assert_array_equal(p["rot_deg"].values, shuffled["rlnAngleRot"].to_numpy())


def test_export_writes_each_copy_to_its_row(tmp_path):
    star = write_set(tmp_path, expand_table(source_table()))
    exp = starfile.read(star)["particles"]
    ps = read_relion_star(star)
    # Unchanged poses: the file comes back row for row.
    back = starfile.read(export_star(tmp_path / "same.star", ps))["particles"]
    pd.testing.assert_frame_equal(back, starfile.read(star)["particles"])
    # New poses on a reordered subset: every copy lands in its own row, never in its siblings'.
    sub = ps.particles.isel(particle=[7, 1, 2, 11])
    sub["psi_deg"] = sub["psi_deg"] + 1.0
    out = starfile.read(export_star(tmp_path / "sub.star", (sub, ps.optics, ps.source)))["particles"]
    keep = np.sort([7, 1, 2, 11])
    np.testing.assert_array_equal(out["rlnImageName"], exp["rlnImageName"].to_numpy()[keep])
    np.testing.assert_array_equal(out["rlnAngleRot"], exp["rlnAngleRot"].to_numpy()[keep])
    np.testing.assert_allclose(out["rlnAnglePsi"], exp["rlnAnglePsi"].to_numpy()[keep] + 1.0, rtol=0, atol=1e-12)
    # And the written file loads again as the same expansion.
    again = read_relion_star(export_star(tmp_path / "all.star", ps)).particles
    np.testing.assert_array_equal(again["symmetry_operator"].values, ps.particles["symmetry_operator"].values)


def test_in_memory_expansion_round_trips_through_a_file(tmp_path):
    plain = read_relion_star(write_set(tmp_path, source_table(), "plain.star"))
    ours = expand_symmetry(plain.particles, "C3")
    out = export_star(tmp_path / "ours_expanded.star", (ours, plain.optics, plain.source))
    loaded = read_relion_star(out).particles
    for v in ("symmetry_source_particle", "symmetry_operator", "half", "rot_deg", "tilt_deg", "psi_deg"):
        np.testing.assert_array_equal(loaded[v].values, ours[v].values, err_msg=v)


def test_copies_in_different_halves_are_an_error(tmp_path):
    exp = expand_table(source_table())
    exp.loc[4, "rlnRandomSubset"] = 3 - exp.loc[4, "rlnRandomSubset"]  # second copy of particle 2
    star = write_set(tmp_path, exp)
    with pytest.raises(
        GmmsessionInputError,
        match=r"expanded\.star: image '000002@s\.mrcs' is listed in rows 4, 5, 6 .* different half sets .*gold-standard",
    ):
        read_relion_star(star)


def test_unequal_group_sizes_are_an_error(tmp_path):
    exp = expand_table(source_table()).drop(index=[5]).reset_index(drop=True)  # particle 2 keeps 2 copies
    with pytest.raises(
        GmmsessionInputError,
        match=r"expanded\.star: duplicate image name '000002@s\.mrcs' in rows 4, 5 .*listed 2 times, but '000001@s\.mrcs' 3",
    ):
        read_relion_star(write_set(tmp_path, exp))


def test_copies_that_differ_elsewhere_are_the_duplicate_error(tmp_path):
    exp = expand_table(source_table())
    exp.loc[8, "rlnDefocusU"] += 10.0  # particle 3, third copy
    with pytest.raises(
        GmmsessionInputError,
        match=r"duplicate image name '000003@s\.mrcs' in rows 7, 8, 9 .*same particle is listed twice.*column rlnDefocusU",
    ):
        read_relion_star(write_set(tmp_path, exp))
    same = expand_table(source_table())
    same.loc[1, ANGLES] = same.loc[0, ANGLES].to_numpy()  # two copies with one pose: a plain duplicate
    with pytest.raises(GmmsessionInputError, match=r"'000001@s\.mrcs' in rows 1, 2, 3 .*same pose"):
        read_relion_star(write_set(tmp_path, same, "same.star"))


def test_random_split_keeps_copies_together(tmp_path):
    exp = expand_table(particles_table([f"{i + 1:06d}@s.mrcs" for i in range(N)], seed=3, halves=False))
    p = read_relion_star(write_set(tmp_path, exp), split_seed=4).particles
    half = p["half"].values.reshape(N, K)
    assert (half == half[:, :1]).all()
    assert sorted(np.bincount(half[:, 0], minlength=3)[1:]) == [N // 2, N // 2]
    assert p.attrs["half_source"] == "random split, seed 4, per source particle"


def test_session_from_expanded_file(tmp_path):
    star = write_set(tmp_path, expand_table(source_table()))
    s = Session.from_star(star)
    assert s.particles.sizes["particle"] == N * K and s.symmetry == "C1"
    assert s.history[0].metrics["n_half1"] + s.history[0].metrics["n_half2"] == N * K
    with pytest.raises(RuntimeError, match=r"nothing to expand \(the particles are already symmetry-expanded: unknown"):
        s.expand_symmetry()
    # Even when told the group, the session does not expand the copies a second time.
    with pytest.raises(RuntimeError, match="already symmetry-expanded .*repeat every copy"):
        Session.from_star(star, symmetry="C3").expand_symmetry()
