"""Bad input: each case fails with a clear message naming the file/particle/column, and
nothing is written."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.io.export import export_star
from gmmsession.data.io.relion import read_relion_star
from gmmsession.data.io.stack import NonFiniteImageError, ParticleImageReader
from gmmsession.data.particles import check_half_sets, check_one_grid, split_random_halves

from .synth import optics_table, particles_table, random_images, relion31_set, write_stack


def _write(tmp_path, particles, optics=None, name="p.star"):
    blocks = {"particles": particles} if optics is None else {"optics": optics, "particles": particles}
    starfile.write(blocks, tmp_path / name)
    return tmp_path / name


def test_missing_stack_loads_metadata_then_fails_on_read(tmp_path):
    star = _write(tmp_path, particles_table(["1@absent.mrcs", "2@absent.mrcs"]), optics_table())
    ps = read_relion_star(star)  # metadata-only: fine
    with ParticleImageReader(ps.particles, ps.optics) as reader:
        with pytest.raises(GmmsessionInputError, match=r"not found: .*absent\.mrcs.*000001@absent|not found: .*absent\.mrcs.*1@absent"):
            reader.read([0])


def test_index_beyond_stack(tmp_path):
    write_stack(tmp_path / "s.mrcs", random_images(3, 16))
    star = _write(tmp_path, particles_table(["1@s.mrcs", "4@s.mrcs"]), optics_table())
    ps = read_relion_star(star)
    with ParticleImageReader(ps.particles, ps.optics) as reader:
        reader.read([0])
        with pytest.raises(GmmsessionInputError, match=r"s\.mrcs: particle 4@s\.mrcs asks for image 4 .* holds 3 images"):
            reader.read([1])


def test_stack_box_differs_from_optics(tmp_path):
    write_stack(tmp_path / "s.mrcs", random_images(2, 20))
    star = _write(tmp_path, particles_table(["1@s.mrcs"]), optics_table(box=16))
    ps = read_relion_star(star)
    with ParticleImageReader(ps.particles, ps.optics) as reader:
        with pytest.raises(GmmsessionInputError, match=r"20 x 20 pixels .* particle 1@s\.mrcs says box 16"):
            reader.read()


def test_no_pixel_size_anywhere(tmp_path):
    p = particles_table(["1@s.mrcs"]).drop(columns=["rlnOpticsGroup"])
    p["rlnVoltage"], p["rlnSphericalAberration"] = 300.0, 2.7
    star = _write(tmp_path, p)  # RELION 3.0 style, no pixel size column
    with pytest.raises(GmmsessionInputError, match=r"p\.star: no pixel size anywhere"):
        read_relion_star(star)
    star31 = _write(tmp_path, particles_table(["1@s.mrcs"]), optics_table().drop(columns=["rlnImagePixelSize"]), "q.star")
    with pytest.raises(GmmsessionInputError, match=r"q\.star: no pixel size anywhere"):
        read_relion_star(star31)


def test_nonfinite_pixels_reported_and_droppable(tmp_path):
    star, images = relion31_set(tmp_path, n=6)
    with mrcfile.open(tmp_path / "parts.mrcs", mode="r+") as mrc:
        mrc.data[2, 3, 4] = np.nan
        mrc.data[5, 0, 0] = np.inf
    ps = read_relion_star(star)
    with ParticleImageReader(ps.particles, ps.optics) as reader:
        with pytest.raises(NonFiniteImageError, match=r"000003@parts\.mrcs, 000006@parts\.mrcs") as info:
            reader.read()
        np.testing.assert_array_equal(info.value.positions, [2, 5])
        np.testing.assert_array_equal(reader.find_nonfinite(), [2, 5])
        kept = list(reader.iter_chunks(chunk_size=4, on_nonfinite="drop"))
        np.testing.assert_array_equal(np.concatenate([p for p, _ in kept]), [0, 1, 3, 4])
        np.testing.assert_array_equal(np.concatenate([i for _, i in kept]), images[[0, 1, 3, 4]])
        np.testing.assert_array_equal(reader.dropped_positions, [2, 5])
        np.testing.assert_array_equal(reader.read([0, 1]), images[[0, 1]])  # good particles still read


@pytest.mark.parametrize("column", ["rlnDefocusU", "rlnImageName"])
def test_required_column_missing(tmp_path, column):
    star = _write(tmp_path, particles_table(["1@s.mrcs"]).drop(columns=[column]), optics_table())
    with pytest.raises(GmmsessionInputError, match=rf"p\.star.*{column}"):
        read_relion_star(star)


def test_required_optics_column_missing(tmp_path):
    star = _write(tmp_path, particles_table(["1@s.mrcs"]), optics_table().drop(columns=["rlnVoltage"]))
    with pytest.raises(GmmsessionInputError, match=r"p\.star: required column rlnVoltage is missing from block data_optics"):
        read_relion_star(star)


def test_no_half_set_column_gives_deterministic_split(tmp_path):
    star = _write(tmp_path, particles_table([f"{i}@s.mrcs" for i in range(1, 12)], halves=False), optics_table())
    a = read_relion_star(star, split_seed=7)
    b = read_relion_star(star, split_seed=7)
    c = read_relion_star(star, split_seed=8)
    np.testing.assert_array_equal(a.particles["half"].values, b.particles["half"].values)
    assert not np.array_equal(a.particles["half"].values, c.particles["half"].values)
    assert sorted(np.bincount(a.particles["half"].values)[1:].tolist()) == [5, 6]
    assert a.particles.attrs["half_source"] == "random split, seed 7"
    check_half_sets(a.particles)
    np.testing.assert_array_equal(split_random_halves(a.particles, 7)["half"].values, a.particles["half"].values)


def test_empty_half_set(tmp_path):
    p = particles_table([f"{i}@s.mrcs" for i in range(1, 5)])
    p["rlnRandomSubset"] = 2
    star = _write(tmp_path, p, optics_table())
    ps = read_relion_star(star)  # metadata loads
    with pytest.raises(GmmsessionInputError, match=r"p\.star: half set 1 is empty"):
        check_half_sets(ps.particles)


def test_bad_half_set_values(tmp_path):
    p = particles_table([f"{i}@s.mrcs" for i in range(1, 5)])
    p.loc[2, "rlnRandomSubset"] = 3
    star = _write(tmp_path, p, optics_table())
    with pytest.raises(GmmsessionInputError, match=r"p\.star: column rlnRandomSubset must be 1 or 2; particle 3@s\.mrcs has 3"):
        read_relion_star(star)


def test_duplicate_image_names(tmp_path):
    """The same particle twice (same name, micrograph and coordinates) is an error; the same
    name on a different micrograph/coordinate is a different particle (see relion5.star)."""
    p = particles_table(["1@s.mrcs", "2@s.mrcs", "1@s.mrcs"])
    p.loc[2, ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"]] = p.loc[0, ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"]]
    star = _write(tmp_path, p, optics_table())
    with pytest.raises(GmmsessionInputError, match=r"p\.star: duplicate image name '1@s\.mrcs' in rows 1, 3"):
        read_relion_star(star)
    bare = particles_table(["1@s.mrcs", "1@s.mrcs"]).drop(columns=["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"])
    with pytest.raises(GmmsessionInputError, match=r"duplicate image name '1@s\.mrcs' in rows 1, 2"):
        read_relion_star(_write(tmp_path, bare, optics_table(), "bare.star"))
    p.loc[2, "rlnCoordinateX"] += 50  # a different particle that re-uses the name
    ps = read_relion_star(_write(tmp_path, p, optics_table(), "ok.star"))
    assert ps.particles.sizes["particle"] == 3


def test_optics_group_not_defined(tmp_path):
    p = particles_table(["1@s.mrcs", "2@s.mrcs"])
    p.loc[1, "rlnOpticsGroup"] = 4
    star = _write(tmp_path, p, optics_table())
    with pytest.raises(GmmsessionInputError, match=r"p\.star: optics group 4 is referenced by particle 2@s\.mrcs but not defined"):
        read_relion_star(star)


def test_malformed_image_name(tmp_path):
    star = _write(tmp_path, particles_table(["abc@s.mrcs"]), optics_table())
    with pytest.raises(GmmsessionInputError, match=r"image name 'abc@s\.mrcs' is not of the form N@stack"):
        read_relion_star(star)


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_corrupt_mrc(tmp_path, corruption):
    star, _ = relion31_set(tmp_path, n=4)
    stack = tmp_path / "parts.mrcs"
    raw = stack.read_bytes()
    stack.write_bytes(b"not an mrc file" * 10 if corruption == "garbage" else raw[: 1024 + 16 * 16 * 4 * 2])
    ps = read_relion_star(star)
    with ParticleImageReader(ps.particles, ps.optics) as reader:
        with pytest.raises(GmmsessionInputError, match=r"parts\.mrcs: corrupt"):
            reader.read([3])


def test_unreadable_star(tmp_path):
    (tmp_path / "x.star").write_text("data_\nloop_\n_rlnImageName #1\n")
    with pytest.raises(GmmsessionInputError, match=r"x\.star"):
        read_relion_star(tmp_path / "x.star")
    with pytest.raises(GmmsessionInputError, match=r"star file not found"):
        read_relion_star(tmp_path / "absent.star")


def test_export_over_the_input_is_refused(tmp_path):
    star, _ = relion31_set(tmp_path, n=4)
    before = star.read_bytes()
    listing = sorted(p.name for p in tmp_path.iterdir())
    ps = read_relion_star(star)
    with pytest.raises(GmmsessionInputError, match=r"refusing to write .*particles\.star: it is an input"):
        export_star(star, ps)
    with pytest.raises(GmmsessionInputError, match=r"refusing to write .*parts\.mrcs"):
        export_star(tmp_path / "parts.mrcs", ps)
    other = tmp_path / "other_input.star"
    other.write_text("x")
    with pytest.raises(GmmsessionInputError, match=r"refusing to write"):
        export_star(other, ps, inputs=[other])
    assert star.read_bytes() == before and other.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(listing + ["other_input.star"])


def _two_group_star(tmp_path, pixel_sizes, boxes, groups_used=(1, 2)):
    optics = pd.concat([optics_table(pixel_size=px, box=b, groups=(g,)) for g, px, b in zip((1, 2), pixel_sizes, boxes)],
                       ignore_index=True)
    particles = pd.concat([particles_table([f"{i}@s{g}.mrcs" for i in (1, 2)], seed=g, optics_group=g) for g in groups_used],
                          ignore_index=True)
    return _write(tmp_path, particles, optics)


def test_optics_groups_with_two_boxes_are_refused_when_a_session_opens(tmp_path):
    import gmmsession as gs

    star = _two_group_star(tmp_path, (1.5, 1.5), (16, 20))
    read_relion_star(star)  # reading (e.g. to convert or export) is still fine
    with pytest.raises(GmmsessionInputError, match=r"p\.star: optics groups 1 \(1\.5 Å/px, box 16\) and 2 \(1\.5 Å/px, box 20\) "
                                                   r"differ; gmmsession processes all particles in one box"):
        gs.Session.from_star(star)


def test_optics_groups_on_one_grid_or_unused_open(tmp_path):
    import gmmsession as gs

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    same = _two_group_star(tmp_path / "a", (1.5, 1.5), (16, 16))
    assert gs.Session.from_star(same).particles.sizes["particle"] == 4
    ps = read_relion_star(same)
    check_one_grid(ps.particles, ps.optics)
    unused = _two_group_star(tmp_path / "b", (1.5, 1.5), (16, 20), groups_used=(1,))
    assert gs.Session.from_star(unused).particles.sizes["particle"] == 2  # group 2 is defined but holds no particle
