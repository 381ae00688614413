"""Lazy particle image reading: order, grouping by file, memory mapping, header warnings."""

from __future__ import annotations

import warnings

import mrcfile
import numpy as np
import pytest
import starfile

from gmmsession.data.io.mrc import MrcHeaderWarning
from gmmsession.data.io.relion import read_relion_star
from gmmsession.data.io.stack import ParticleImageReader, stack_shape

from .synth import optics_table, particles_table, random_images, relion31_set, write_stack


def _two_stack_set(tmp_path):
    a, b = random_images(5, 16, seed=1), random_images(4, 16, seed=2)
    write_stack(tmp_path / "a.mrcs", a)
    write_stack(tmp_path / "b.mrcs", b)
    names = [f"{i}@a.mrcs" for i in (3, 1, 5)] + [f"{i}@b.mrcs" for i in (4, 2)] + ["2@a.mrcs"]
    star = tmp_path / "p.star"
    starfile.write({"optics": optics_table(), "particles": particles_table(names)}, star)
    expected = np.stack([a[2], a[0], a[4], b[3], b[1], a[1]])
    return read_relion_star(star), expected


def test_read_any_order_across_files(tmp_path):
    ps, expected = _two_stack_set(tmp_path)
    with ParticleImageReader(ps.particles, ps.optics) as reader:
        got = reader.read([4, 0, 5, 3, 3])
        assert got.dtype == np.float32 and got.shape == (5, 16, 16)
        np.testing.assert_array_equal(got, expected[[4, 0, 5, 3, 3]])
        np.testing.assert_array_equal(reader.read(), expected)
        mask = np.array([True, False, True, False, False, True])
        np.testing.assert_array_equal(reader.read(mask), expected[mask])
        # Files are memory-mapped, opened once and cached.
        assert len(reader._open) == 2
        assert all(isinstance(s.data, np.memmap) for s in reader._open.values())


def test_iter_chunks_covers_positions(tmp_path):
    ps, expected = _two_stack_set(tmp_path)
    with ParticleImageReader(ps.particles, ps.optics) as reader:
        seen = []
        for pos, images in reader.iter_chunks(np.array([5, 4, 3, 2, 1, 0]), chunk_size=4):
            assert len(pos) <= 4
            np.testing.assert_array_equal(images, expected[pos])
            seen.extend(pos.tolist())
    assert seen == [5, 4, 3, 2, 1, 0]


def test_integer_stack_is_float32(tmp_path):
    data = np.arange(3 * 8 * 8, dtype=np.int16).reshape(3, 8, 8)
    with mrcfile.new(tmp_path / "i.mrcs") as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = 1.5
    starfile.write({"optics": optics_table(box=8), "particles": particles_table(["1@i.mrcs", "3@i.mrcs"])}, tmp_path / "p.star")
    ps = read_relion_star(tmp_path / "p.star")
    with ParticleImageReader(ps.particles, ps.optics) as reader:
        got = reader.read()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, data[[0, 2]].astype(np.float32))


def test_lying_header_warns_once_per_file_and_star_pixel_wins(tmp_path):
    """Header pixel size 1.0 while the star says 1.5: one MrcHeaderWarning for the file, however
    many reads; the optics pixel size stays the star's."""
    star, images = relion31_set(tmp_path, n=4)
    with mrcfile.open(tmp_path / "parts.mrcs", mode="r+") as mrc:
        mrc.voxel_size = 1.0
    ps = read_relion_star(star)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ParticleImageReader(ps.particles, ps.optics) as reader:
            reader.read([0])
            reader.read([1, 2])
            list(reader.iter_chunks(chunk_size=1))
    header = [w for w in caught if issubclass(w.category, MrcHeaderWarning)]
    # A library's deprecation notice is not about the file (NumPy 2.5 deprecates how mrcfile 1.5.4 reads headers).
    others = [w for w in caught if not issubclass(w.category, (MrcHeaderWarning, DeprecationWarning))]
    assert len(header) == 1 and not others
    assert "1" in str(header[0].message) and "1.5" in str(header[0].message)
    assert float(ps.optics["pixel_size_angstrom"][0]) == 1.5


def test_real_stack_without_map_id(shared_data):
    """relion31.mrcs: no 'MAP ' id and header pixel 1.0 (star: 2.806): read permissively, warn once."""
    ps = read_relion_star(shared_data / "relion" / "relion31.star")
    with pytest.warns(MrcHeaderWarning, match="relion31.mrcs") as record:
        with ParticleImageReader(ps.particles, ps.optics) as reader:
            images = reader.read([4, 0])
            reader.read([1])
    assert len(record) == 1
    assert images.shape == (2, 256, 256) and np.isfinite(images).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(shared_data / "relion" / "relion31.mrcs", permissive=True) as mrc:
            np.testing.assert_array_equal(images, np.asarray(mrc.data[[4, 0]], dtype=np.float32))


def test_real_stack_with_zero_pixel_header(shared_data):
    ps = read_relion_star(shared_data / "relion" / "empiar_10076_7.star")
    with pytest.warns(MrcHeaderWarning, match="pixel size 0"):
        with ParticleImageReader(ps.particles, ps.optics) as reader:
            assert reader.read([6]).shape == (1, 320, 320)


def test_stack_shape(tmp_path):
    write_stack(tmp_path / "s.mrcs", random_images(3, 12))
    assert stack_shape(tmp_path / "s.mrcs") == (3, 12, 12)
    assert stack_shape(tmp_path / "absent.mrcs") is None


def test_only_mrcfile_runtime_warnings_count_as_header_problems():
    """A library's deprecation warning while reading is re-issued as itself, not reported as a header problem."""
    import warnings

    from gmmsession.data.io.mrc import header_problems

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("Map ID string not found", RuntimeWarning)
        warnings.warn("numpy would like you to use x.view", DeprecationWarning)
    with pytest.warns(DeprecationWarning, match="x.view"):
        assert header_problems(caught) == ["Map ID string not found"]
