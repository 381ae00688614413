"""cryoSPARC's ``blob/sign``: stored as ``image_sign`` and applied by the image reader, so that
every consumer sees RELION's contrast (protein bright); kept by save/open; flagged on export."""

from __future__ import annotations

import warnings

import mrcfile
import numpy as np
import pytest
import xarray as xr

import gmmsession as gs
from gmmsession.data.chunks import iter_particle_chunks
from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.io.cryosparc import read_cryosparc
from gmmsession.data.io.export import InvertedContrastWarning, export_star
from gmmsession.data.io.mrc import MrcHeaderWarning
from gmmsession.data.io.relion import read_relion_star
from gmmsession.data.io.stack import ParticleImageReader

from .synth import cryosparc_records, relion31_set, write_cs

N = 8


def _write_mrc_stack(path, images, pixel_size=1.5):
    with mrcfile.new(path, overwrite=True) as mrc:  # cryoSPARC writes .mrc stacks
        mrc.set_data(np.ascontiguousarray(images, dtype=np.float32))
        mrc.voxel_size = pixel_size
    return path


@pytest.fixture
def bright(tmp_path):
    """A RELION set of N random images (taken as protein-bright) with poses and CTF."""
    star, images = relion31_set(tmp_path, n=N)
    return read_relion_star(star), images


def _cs_set(tmp_path, bright, sign, stored, name="p.cs"):
    ps, _ = bright
    _write_mrc_stack(tmp_path / "stack.mrc", stored)
    return read_cryosparc(write_cs(tmp_path / name, cryosparc_records(ps.particles, ps.optics, "stack.mrc", sign)))


def _read(ps, positions=None):
    with ParticleImageReader(ps.particles, ps.optics) as reader:
        return reader.read(positions)


def test_sign_minus_one_turns_dark_stack_bright(tmp_path, bright):
    _, images = bright
    cs = _cs_set(tmp_path, bright, -1.0, -images)
    sign = cs.particles["image_sign"]
    assert sign.dtype == np.float32 and sign.attrs["units"] == "1"
    np.testing.assert_array_equal(sign.values, -np.ones(N, np.float32))
    np.testing.assert_array_equal(_read(cs), images)
    # The chunks every step consumes, in any order and chunking.
    order = np.array([5, 0, 7, 2, 2, 1])
    got = np.concatenate([c.images.numpy() for c in iter_particle_chunks(cs.particles, cs.optics, order, chunk_size=4)])
    np.testing.assert_array_equal(got, images[order])
    with ParticleImageReader(cs.particles, cs.optics) as reader:
        for pos, chunk in reader.iter_chunks(order, chunk_size=3):
            np.testing.assert_array_equal(chunk, images[pos])


def test_sign_plus_one_and_absent_field_leave_images_unchanged(tmp_path, bright):
    _, images = bright
    plus = _cs_set(tmp_path, bright, 1.0, images, "plus.cs")
    np.testing.assert_array_equal(plus.particles["image_sign"].values, np.ones(N, np.float32))
    np.testing.assert_array_equal(_read(plus), images)
    absent = _cs_set(tmp_path, bright, None, images, "absent.cs")
    assert "blob/sign" not in absent.source.cs.dtype.names
    np.testing.assert_array_equal(absent.particles["image_sign"].values, np.ones(N, np.float32))
    np.testing.assert_array_equal(_read(absent), images)


def test_sign_is_per_particle(tmp_path, bright):
    """Mixed signs (a set merged from extracted and imported particles): each image gets its own."""
    _, images = bright
    sign = np.where(np.arange(N) % 3 == 0, -1.0, 1.0).astype(np.float32)
    cs = _cs_set(tmp_path, bright, sign, images * sign[:, None, None])
    np.testing.assert_array_equal(_read(cs), images)
    np.testing.assert_array_equal(_read(cs, [6, 3, 0, 4]), images[[6, 3, 0, 4]])
    # A subset keeps each particle's own sign.
    sub = cs.particles.isel(particle=[3, 1, 0])
    with ParticleImageReader(sub, cs.optics) as reader:
        np.testing.assert_array_equal(reader.read(), images[[3, 1, 0]])


@pytest.mark.parametrize("bad", [0.0, np.nan, 0.5, -2.0])
def test_bad_sign_names_file_field_and_particle(tmp_path, bright, bad):
    ps, images = bright
    _write_mrc_stack(tmp_path / "stack.mrc", images)
    records = cryosparc_records(ps.particles, ps.optics, "stack.mrc", -1.0)
    records["blob/sign"][[2, 5]] = bad
    path = write_cs(tmp_path / "bad.cs", records)
    with pytest.raises(GmmsessionInputError) as info:
        read_cryosparc(path)
    msg = str(info.value)
    assert str(path) in msg and "blob/sign" in msg and "+1 or -1" in msg
    assert f"uid {records['uid'][2]}" in msg and "row 2" in msg and "000003@stack.mrc" in msg
    assert "2 such particles" in msg


def test_reader_refuses_a_bad_image_sign_in_the_dataset(tmp_path, bright):
    _, images = bright
    cs = _cs_set(tmp_path, bright, -1.0, -images)
    p = cs.particles.copy(deep=True)
    p["image_sign"].values[4] = 0.0
    with pytest.raises(GmmsessionInputError, match="image_sign must be \\+1 or -1; particle 000005@stack.mrc has 0.0"):
        ParticleImageReader(p, cs.optics)


def test_relion_sets_have_no_image_sign(bright):
    ps, images = bright
    assert "image_sign" not in ps.particles
    np.testing.assert_array_equal(_read(ps), images)


def test_session_save_open_keeps_image_sign(tmp_path, bright):
    _, images = bright
    _write_mrc_stack(tmp_path / "stack.mrc", -images)
    ps, _ = bright
    cs_path = write_cs(tmp_path / "p.cs", cryosparc_records(ps.particles, ps.optics, "stack.mrc", -1.0))
    s = gs.Session.from_cryosparc(cs_path)
    r = gs.open_session(s.save(tmp_path / "run.gmms"))
    xr.testing.assert_identical(r.particles["image_sign"], s.particles["image_sign"])
    assert r.particles["image_sign"].dtype == np.float32
    with ParticleImageReader(r.particles, r.optics) as reader:
        np.testing.assert_array_equal(reader.read(), images)


# ----------------------------------------------------------------------------- export
def test_export_of_dark_cryosparc_particles_warns(tmp_path, bright):
    _, images = bright
    cs = _cs_set(tmp_path, bright, -1.0, -images)
    with pytest.warns(InvertedContrastWarning, match=f"{N} of {N} particles .*image_sign -1.*inverted") as record:
        out = export_star(tmp_path / "out.star", cs)
    assert len(record) == 1 and "stack.mrc" in str(record[0].message) and "multiply_constant -1" in str(record[0].message)
    assert out.is_file()


def test_export_of_dark_cryosparc_particles_can_refuse(tmp_path, bright):
    _, images = bright
    cs = _cs_set(tmp_path, bright, -1.0, -images)
    with pytest.raises(GmmsessionInputError, match="refusing to write .*out.star.*image_sign -1"):
        export_star(tmp_path / "out.star", cs, on_dark_images="raise")
    assert not (tmp_path / "out.star").exists() and not (tmp_path / "out_stacks").exists()
    with pytest.raises(ValueError, match="on_dark_images"):
        export_star(tmp_path / "out.star", cs, on_dark_images="ignore")


def test_session_export_star_passes_on_dark_images(tmp_path, bright):
    ps, images = bright
    _write_mrc_stack(tmp_path / "stack.mrc", -images)
    s = gs.Session.from_cryosparc(write_cs(tmp_path / "p.cs", cryosparc_records(ps.particles, ps.optics, "stack.mrc", -1.0)))
    with pytest.raises(GmmsessionInputError, match="image_sign -1"):
        s.export_star(tmp_path / "strict.star", on_dark_images="raise")
    assert not (tmp_path / "strict.star").exists()
    with pytest.warns(InvertedContrastWarning):
        s.export_star(tmp_path / "default.star")


def test_export_of_bright_cryosparc_particles_is_quiet(tmp_path, bright):
    _, images = bright
    cs = _cs_set(tmp_path, bright, 1.0, images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_star(tmp_path / "out.star", cs, on_dark_images="raise")
    # Only the dark particles count: a subset without them exports quietly.
    mixed = _cs_set(tmp_path, bright, np.array([-1, 1, 1, 1, 1, 1, 1, 1], np.float32), images, "mixed.cs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_star(tmp_path / "sub.star", (mixed.particles.isel(particle=slice(1, None)), mixed.optics, mixed.source))


# ----------------------------------------------------------------------------- real files
def test_real_files_carry_sign_minus_one(shared_data):
    for name, n in [("cryosparc_P12_J24_001_particles.cs", 2019), ("cryosparc_J2_particles_exported.cs", 22), ("empiar_10076_7.cs", 7)]:
        p = read_cryosparc(shared_data / "cryosparc" / name, stacks_root=shared_data / "relion").particles
        assert p["image_sign"].dtype == np.float32, name
        np.testing.assert_array_equal(p["image_sign"].values, -np.ones(n, np.float32), err_msg=name)


def test_real_empiar_images_are_dark_on_disk_and_bright_after_sign(shared_data):
    """empiar_10076_7.cs imports the stack that empiar_10076_7.star names, with blob/sign -1.
    The stored ribosomes are dark: low-pass filtered below the CTF's first zero (CTF > 0
    there in RELION's convention), every particle's centre is darker than its edge. Read
    through the .cs file they come out bright, the RELION convention gmmsession uses."""
    star = read_relion_star(shared_data / "relion" / "empiar_10076_7.star")
    cs = read_cryosparc(shared_data / "cryosparc" / "empiar_10076_7.cs", stacks_root=shared_data / "relion")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MrcHeaderWarning)  # header pixel size 0 (tested in test_stack)
        stored, signed = _read(star), _read(cs)
    np.testing.assert_array_equal(signed, -stored)
    box, px = stored.shape[-1], 1.31
    f = np.fft.fftfreq(box, d=px)
    low = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2) < 1 / 40.0  # first CTF zero near 1/17 Å at 1.5 µm
    y, x = np.mgrid[:box, :box] - box // 2
    r = np.hypot(x, y)
    for images, dark in ((stored, True), (signed, False)):
        lp = np.real(np.fft.ifft2(np.fft.fft2(images.astype(np.float64)) * low))
        centre_minus_edge = lp[:, r < 60].mean(-1) - lp[:, r > 140].mean(-1)
        assert ((centre_minus_edge < 0) if dark else (centre_minus_edge > 0)).all(), centre_minus_edge


# ----------------------------------------------------------------------------- reconstruction
def test_dark_cryosparc_copy_reconstructs_the_relion_map(tmp_path):
    """A simulated RELION set (protein bright) rewritten as cryoSPARC would hold it: stack
    inverted, blob/sign -1, poses as rotation vectors of A.T, shifts in pixels, float32
    fields. Its half maps equal the RELION set's: FSC > 0.99999 in every shell and correlation
    > 1 - 1e-6 (measured: FSC >= 1 - 4e-11, correlation >= 1 - 7e-12). Not bit-equal because the .cs stores poses,
    shifts and defoci in float32 (pose ~1e-7 rad, defocus ~1e-3 Å); the margin leaves room for
    other float32 round-offs without admitting any real contrast or pose error. The same .cs
    without the sign (what gmmsession read before) gives the inverted map (correlation
    < -(1 - 1e-6)), so the check can fail."""
    import torch

    from gmmsession.kernels.fsc import fsc_3d

    sim = gs.simulate(tmp_path / "sim", n_particles=300, box_size=24, pixel_size_angstrom=3.0, snr=1.0, hinge_max_deg=0.0, seed=5)
    relion = gs.Session.from_star(sim.particles_star)
    relion.reconstruct(progress=False)
    with mrcfile.open(sim.stack) as mrc:
        stored = np.asarray(mrc.data, dtype=np.float32)
    _write_mrc_stack(tmp_path / "dark.mrc", -stored, pixel_size=3.0)
    p, o = relion.particles, relion.optics
    maps = {}
    for label, sign in (("signed", -1.0), ("unsigned", None)):
        path = write_cs(tmp_path / f"{label}.cs", cryosparc_records(p, o, "dark.mrc", sign))
        s = gs.Session.from_cryosparc(path)
        np.testing.assert_array_equal(s.particles["half"].values, p["half"].values)
        s.reconstruct(progress=False)
        maps[label] = s.half_maps
    for half in (1, 2):
        ref = relion.half_maps.sel(half=half).values.astype(np.float64)
        for label, expect in (("signed", 1.0), ("unsigned", -1.0)):
            got = maps[label].sel(half=half).values.astype(np.float64)
            corr = np.corrcoef(ref.ravel(), got.ravel())[0, 1]
            assert corr * expect > 1 - 1e-6, (half, label, corr)
        fsc = fsc_3d(torch.from_numpy(ref), torch.from_numpy(maps["signed"].sel(half=half).values.astype(np.float64)))
        assert fsc.min().item() > 0.99999, fsc
