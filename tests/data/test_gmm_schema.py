"""The GMM's xarray schema and its bridge to tensors."""

import numpy as np
import pytest
import torch
import xarray as xr

from gmmsession.data.gmm import GMM_UNITS, GmmTensors, gmm_dataset, gmm_to_tensors


def _gmm(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return GmmTensors(torch.randn(n, 3, generator=g) * 10, torch.rand(n, generator=g) + 0.1, torch.rand(n, generator=g) + 1.0)


def test_single_gmm_dataset_has_the_schema_and_round_trips():
    gmm = _gmm(7)
    ds = gmm_dataset(gmm, pixel_size_angstrom=1.5, box_size=64, resolution_angstrom=6.0, attrs={"min_fsc": 0.95})
    assert dict(ds.sizes) == {"gaussian": 7, "xyz": 3}
    assert ds["position_angstrom"].dims == ("gaussian", "xyz")
    assert ds["xyz"].values.tolist() == ["x", "y", "z"]
    for name, units in GMM_UNITS.items():
        assert ds[name].attrs["units"] == units
    assert ds.attrs["pixel_size_angstrom"] == 1.5 and ds.attrs["box_size"] == 64 and ds.attrs["resolution_angstrom"] == 6.0
    assert ds.attrs["min_fsc"] == 0.95 and "box // 2" in ds.attrs["frame"]
    # x is the first component: the dataset's x column equals the tensor's column 0
    np.testing.assert_array_equal(ds["position_angstrom"].sel(xyz="x").values, gmm.positions_angstrom[:, 0].numpy())
    back = gmm_to_tensors(ds)
    for a, b in zip((back.positions_angstrom, back.amplitudes, back.widths_angstrom), (gmm.positions_angstrom, gmm.amplitudes, gmm.widths_angstrom)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="no half dimension"):
        gmm_to_tensors(ds, half=1)


def test_per_half_dataset_pads_and_drops_padding():
    g1, g2 = _gmm(5, 1), _gmm(3, 2)
    ds = gmm_dataset([g1, g2], pixel_size_angstrom=2.0, box_size=32)
    assert ds["amplitude"].dims == ("half", "gaussian") and ds["half"].values.tolist() == [1, 2]
    assert dict(ds.sizes) == {"half": 2, "gaussian": 5, "xyz": 3}
    assert np.isnan(ds["amplitude"].sel(half=2).values[3:]).all()
    b1, b2 = gmm_to_tensors(ds, half=1, dtype=torch.float64), gmm_to_tensors(ds, half=2)
    assert b1.n_gaussians == 5 and b2.n_gaussians == 3 and b1.amplitudes.dtype == torch.float64
    torch.testing.assert_close(b2.positions_angstrom, g2.positions_angstrom)
    with pytest.raises(ValueError, match="half=1 or half=2"):
        gmm_to_tensors(ds)
    with pytest.raises(ValueError, match="half must be one of"):
        gmm_to_tensors(ds, half=3)
    with pytest.raises(ValueError, match="exactly two"):
        gmm_dataset([g1, g2, g1])


def test_netcdf_round_trip(tmp_path):
    ds = gmm_dataset([_gmm(4, 1), _gmm(4, 2)], pixel_size_angstrom=1.2, box_size=48, resolution_angstrom=5.0)
    path = tmp_path / "gmm.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    with xr.open_dataset(path, engine="h5netcdf") as back:
        back = back.load()
    xr.testing.assert_identical(back, ds)
    torch.testing.assert_close(gmm_to_tensors(back, half=2).widths_angstrom, gmm_to_tensors(ds, half=2).widths_angstrom)


def test_tensors_validate_shapes_and_move():
    with pytest.raises(ValueError, match=r"\(4, 2\)"):
        GmmTensors(torch.zeros(4, 2), torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="amplitudes"):
        GmmTensors(torch.zeros(4, 3), torch.zeros(3), torch.zeros(4))
    g = _gmm(3).to(dtype=torch.float64)
    assert g.positions_angstrom.dtype == torch.float64 and g.n_gaussians == 3
    with pytest.raises(ValueError, match="missing variables"):
        gmm_to_tensors(xr.Dataset({"amplitude": ("gaussian", np.ones(2))}))
