"""Star files written by relion_particle_symmetry_expand load as a symmetry-expanded set
(the set Session.expand_symmetry builds in memory) and export back row by row; so do the
subsets a focused classification of the expanded set and a class selection leave (unequal
numbers of copies, copies that differ in class and score columns)."""

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
    assert p.attrs["symmetry_expanded"] == (
        f"unknown ({K} copies per particle in expanded.star; symmetry_operator is each copy's order among its "
        "particle's rows, not a known operator number)"
    )
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


#: Rows of expand_table(source_table()) that a class selection keeps: particle 1 one copy (its
#: second), particle 2 two (first and third), particle 3 all three, particle 4 one (its first).
SUBSET_ROWS = [1, 3, 5, 6, 7, 8, 9]
CLASS_COLUMNS = ["rlnClassNumber", "rlnLogLikeliContribution", "rlnMaxValueProbDistribution",
                 "rlnNrOfSignificantSamples", "rlnNormCorrection"]


def classified(df: pd.DataFrame, seed: int = 5) -> pd.DataFrame:
    """What relion_refine --skip_align writes into an expanded table: per-row class and statistics columns."""
    rng = np.random.default_rng(seed)
    out = df.copy()
    n = len(out)
    out["rlnClassNumber"] = rng.integers(1, 4, n)
    out["rlnLogLikeliContribution"] = rng.normal(0, 1e4, n)
    out["rlnMaxValueProbDistribution"] = rng.uniform(0, 1, n)
    out["rlnNrOfSignificantSamples"] = rng.integers(1, 20, n)
    out["rlnNormCorrection"] = rng.uniform(0.5, 1.5, n)
    return out


def subset_table() -> pd.DataFrame:
    """An expanded, classified table of which only some copies were selected (1, 2, 3 and 1 per particle)."""
    return classified(expand_table(source_table())).iloc[SUBSET_ROWS].reset_index(drop=True)


def test_classified_subset_loads_as_expanded_set(tmp_path):
    src = source_table()
    sub = subset_table()
    # The copies of a particle differ in the per-copy columns (else this test proves nothing).
    for column in ("rlnClassNumber", "rlnLogLikeliContribution"):
        assert sub.iloc[3:6][column].nunique() == 3, column
    star = write_set(tmp_path, sub, "subset.star")
    ps = read_relion_star(star)
    p = ps.particles
    assert p.sizes["particle"] == len(SUBSET_ROWS) == 7
    np.testing.assert_array_equal(p["symmetry_source_particle"].values, [0, 1, 1, 2, 2, 2, 3])
    np.testing.assert_array_equal(p["symmetry_operator"].values, [0, 0, 1, 0, 1, 2, 0])
    np.testing.assert_array_equal(p["stack_index"].values, [0, 1, 1, 2, 2, 2, 3])
    np.testing.assert_array_equal(p["half"].values, src["rlnRandomSubset"].to_numpy()[[0, 1, 1, 2, 2, 2, 3]])
    assert p.attrs["half_source"] == "file"
    assert p.attrs["symmetry_expanded"] == (
        "unknown (1 to 3 copies per particle in subset.star; symmetry_operator is each copy's order among its "
        "particle's rows, not a known operator number)"
    )
    assert "not an operator number" in p["symmetry_operator"].attrs["long_name"]
    written = starfile.read(star)["particles"]
    np.testing.assert_array_equal(p["rot_deg"].values, written["rlnAngleRot"].to_numpy())
    assert pd.Series(p["particle_key"].values).is_unique
    # Export writes the file back row for row: every per-copy column stays in its own row.
    back = starfile.read(export_star(tmp_path / "back.star", ps))["particles"]
    pd.testing.assert_frame_equal(back, written)
    # New poses on a reordered subset land in their own rows, next to their own class columns.
    pick = [5, 0, 3]
    part = ps.particles.isel(particle=pick)
    part["psi_deg"] = part["psi_deg"] + 1.0
    out = starfile.read(export_star(tmp_path / "part.star", (part, ps.optics, ps.source)))["particles"]
    keep = np.sort(pick)
    for column in ["rlnImageName", "rlnAngleRot", *CLASS_COLUMNS]:
        np.testing.assert_array_equal(out[column], written[column].to_numpy()[keep], err_msg=column)
    np.testing.assert_allclose(out["rlnAnglePsi"], written["rlnAnglePsi"].to_numpy()[keep] + 1.0, rtol=0, atol=1e-12)
    # The full classified table (3 copies each, differing in class and scores) loads too.
    full = read_relion_star(write_set(tmp_path, classified(expand_table(src)), "classified.star")).particles
    np.testing.assert_array_equal(full["symmetry_operator"].values, np.tile(np.arange(K), N))


def test_session_from_classified_subset(tmp_path):
    s = Session.from_star(write_set(tmp_path, subset_table(), "subset.star"))
    assert s.particles.sizes["particle"] == 7 and s.symmetry == "C1"
    assert s.history[0].metrics["n_half1"] + s.history[0].metrics["n_half2"] == 7
    with pytest.raises(RuntimeError, match="already symmetry-expanded: unknown \\(1 to 3 copies"):
        s.expand_symmetry()
    back = starfile.read(s.export_star(tmp_path / "back.star"))["particles"]
    pd.testing.assert_frame_equal(back, starfile.read(tmp_path / "subset.star")["particles"])


def test_random_split_of_a_subset_keeps_copies_together(tmp_path):
    sub = subset_table().drop(columns="rlnRandomSubset")
    p = read_relion_star(write_set(tmp_path, sub, "subset.star"), split_seed=2).particles
    half, source = p["half"].values, p["symmetry_source_particle"].values
    for g in range(4):
        assert len(set(half[source == g])) == 1, g
    assert sorted(np.bincount([half[source == g][0] for g in range(4)], minlength=3)[1:]) == [2, 2]


def test_subset_with_same_pose_copies_is_an_error(tmp_path):
    sub = subset_table()
    sub.loc[4, ANGLES] = sub.loc[3, ANGLES].to_numpy()  # particle 3: two copies, one pose, different classes
    assert sub.loc[3, "rlnLogLikeliContribution"] != sub.loc[4, "rlnLogLikeliContribution"]
    with pytest.raises(
        GmmsessionInputError,
        match=r"subset\.star: duplicate image name '000003@s\.mrcs' in rows 4, 5, 6 .*two copies have the same pose",
    ):
        read_relion_star(write_set(tmp_path, sub, "subset.star"))


def test_subset_with_copies_in_both_halves_is_an_error(tmp_path):
    sub = subset_table()
    sub.loc[2, "rlnRandomSubset"] = 3 - sub.loc[2, "rlnRandomSubset"]  # second kept copy of particle 2
    with pytest.raises(
        GmmsessionInputError,
        match=r"subset\.star: image '000002@s\.mrcs' is listed in rows 2, 3 .* different half sets .*gold-standard",
    ):
        read_relion_star(write_set(tmp_path, sub, "subset.star"))


def test_copies_may_differ_in_unknown_columns_but_not_in_per_image_ones(tmp_path):
    """The rule: any column may differ between copies except the image's own (identity, optics, CTF)."""
    sub = subset_table()
    sub.loc[4, "rlnMyUnknownColumn"] += 1.0
    sub.loc[4, "rlnAngleRotPrior"] = 10.0  # a column the rows did not have: NaN elsewhere
    p = read_relion_star(write_set(tmp_path, sub, "unknown.star")).particles
    assert p.sizes["particle"] == 7
    for column, change in (("rlnDefocusV", 5.0), ("rlnOpticsGroup", 1), ("rlnCoordinateX", 0.5)):
        bad = subset_table()
        bad.loc[5, column] += change  # particle 3, its third copy
        if column == "rlnOpticsGroup":
            optics = pd.concat([optics_table(), optics_table(groups=(2,))], ignore_index=True)
            star = tmp_path / "opt.star"
            starfile.write({"optics": optics, "particles": bad}, star, overwrite=True)
        else:
            star = write_set(tmp_path, bad, f"{column}.star")
        if column == "rlnCoordinateX":
            # Another coordinate is another particle with the same image name: no longer a copy.
            q = read_relion_star(star).particles
            np.testing.assert_array_equal(q["symmetry_source_particle"].values, [0, 1, 1, 2, 2, 3, 4])
            continue
        with pytest.raises(
            GmmsessionInputError,
            match=rf"duplicate image name '000003@s\.mrcs' in rows 4, 5, 6 .*differ in column {column} .*image itself",
        ):
            read_relion_star(star)


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
