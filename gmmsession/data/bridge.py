"""The one bridge between labelled xarray data and raw torch tensors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from gmmsession.data.errors import GmmsessionInputError
from gmmsession.data.schema import UNITS
from gmmsession.kernels.conventions import euler_relion_to_matrix

__all__ = ["ParticleTensors", "particle_tensors", "volume_dataarray", "half_maps_dataarray"]


@dataclass(frozen=True)
class ParticleTensors:
    """Per-particle parameters as tensors, all with leading dimension ``n``.

    ``rotation`` (n, 3, 3) RELION matrices; ``origin_angstrom`` (n, 2) rlnOriginX/YAngst;
    CTF parameters (n,) each; optics constants gathered per particle (n,).
    """

    rotation: torch.Tensor
    origin_angstrom: torch.Tensor
    defocus_u_angstrom: torch.Tensor
    defocus_v_angstrom: torch.Tensor
    defocus_angle_deg: torch.Tensor
    phase_shift_deg: torch.Tensor
    ctf_bfactor_angstrom2: torch.Tensor
    ctf_scale: torch.Tensor
    voltage_kv: torch.Tensor
    cs_mm: torch.Tensor
    amplitude_contrast: torch.Tensor
    pixel_size_angstrom: torch.Tensor
    box_size: torch.Tensor

    def select(self, index: torch.Tensor | slice) -> "ParticleTensors":
        """The particles ``index`` (positions along the leading dimension)."""
        return ParticleTensors(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def to(self, device: torch.device | str) -> "ParticleTensors":
        """The same parameters on another device."""
        return ParticleTensors(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})

    def ctf_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for :func:`gmmsession.kernels.ctf.ctf_2d`."""
        return dict(
            defocus_u_angstrom=self.defocus_u_angstrom,
            defocus_v_angstrom=self.defocus_v_angstrom,
            defocus_angle_deg=self.defocus_angle_deg,
            voltage_kv=self.voltage_kv,
            cs_mm=self.cs_mm,
            amplitude_contrast=self.amplitude_contrast,
            phase_shift_deg=self.phase_shift_deg,
            bfactor_angstrom2=self.ctf_bfactor_angstrom2,
            scale=self.ctf_scale,
        )


def particle_tensors(
    particles: xr.Dataset,
    optics: xr.Dataset,
    index: np.ndarray | slice | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> ParticleTensors:
    """Gather the particles ``index`` (positions along ``particle``) into tensors.

    Raises
    ------
    GmmsessionInputError
        If a pose is missing (NaN) or a particle's optics group is not defined.
    """
    sel = particles if index is None else particles.isel(particle=index)
    euler = np.stack([sel["rot_deg"].values, sel["tilt_deg"].values, sel["psi_deg"].values], axis=-1)
    if np.isnan(euler).any():
        bad = sel["image_name"].values[np.isnan(euler).any(axis=-1)][0]
        raise GmmsessionInputError(f"particle {bad} has no pose (rlnAngleRot/Tilt/Psi missing or NaN)")
    groups = sel["optics_group"].values
    known = optics["optics_group"].values
    pos = np.searchsorted(known, groups)
    pos = np.clip(pos, 0, len(known) - 1)
    if len(known) == 0 or np.any(known[pos] != groups):
        bad = groups[known[pos] != groups][0] if len(known) else groups[0]
        raise GmmsessionInputError(f"optics group {bad} is referenced by particles but not defined")

    def t(x: np.ndarray, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=dt, device=device)

    def per_group(name: str) -> np.ndarray:
        return optics[name].values[pos]

    rotation = euler_relion_to_matrix(t(euler, torch.float64)).to(dtype)
    return ParticleTensors(
        rotation=rotation,
        origin_angstrom=t(np.stack([sel["origin_x_angstrom"].values, sel["origin_y_angstrom"].values], -1)),
        defocus_u_angstrom=t(sel["defocus_u_angstrom"].values),
        defocus_v_angstrom=t(sel["defocus_v_angstrom"].values),
        defocus_angle_deg=t(sel["defocus_angle_deg"].values),
        phase_shift_deg=t(sel["phase_shift_deg"].values),
        ctf_bfactor_angstrom2=t(sel["ctf_bfactor_angstrom2"].values),
        ctf_scale=t(sel["ctf_scale"].values),
        voltage_kv=t(per_group("voltage_kv")),
        cs_mm=t(per_group("cs_mm")),
        amplitude_contrast=t(per_group("amplitude_contrast")),
        pixel_size_angstrom=t(per_group("pixel_size_angstrom")),
        box_size=t(per_group("box_size"), torch.int64),
    )


def _axis_coords(box_size: int, pixel_size_angstrom: float) -> np.ndarray:
    return (np.arange(box_size) - box_size // 2) * pixel_size_angstrom


def volume_dataarray(volume: torch.Tensor | np.ndarray, pixel_size_angstrom: float, name: str = "map") -> xr.DataArray:
    """A ``(z, y, x)`` volume as a DataArray with coordinates in Å (0 at voxel ``box // 2``)."""
    arr = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise ValueError(f"volume must be cubic (box, box, box), got shape {arr.shape}")
    c = _axis_coords(arr.shape[0], pixel_size_angstrom)
    da = xr.DataArray(arr.astype(np.float32), dims=("z", "y", "x"), coords={"z": c, "y": c, "x": c}, name=name)
    for d in ("z", "y", "x"):
        da[d].attrs["units"] = UNITS[d]
    da.attrs["pixel_size_angstrom"] = float(pixel_size_angstrom)
    return da


def half_maps_dataarray(half1: torch.Tensor | np.ndarray, half2: torch.Tensor | np.ndarray, pixel_size_angstrom: float) -> xr.DataArray:
    """Two half maps as one DataArray with dims ``half`` = [1, 2], ``z``, ``y``, ``x``."""
    a = volume_dataarray(half1, pixel_size_angstrom)
    b = volume_dataarray(half2, pixel_size_angstrom)
    out = xr.concat([a, b], dim=xr.DataArray([1, 2], dims="half", name="half"))
    out.name = "half_maps"
    out.attrs["pixel_size_angstrom"] = float(pixel_size_angstrom)
    return out


def fsc_dataarray(result, box_size: int, pixel_size_angstrom: float) -> xr.DataArray:
    """An FSC result (``gmmsession.algorithms.postprocess.FscResult``) as a DataArray over ``shell``.

    The values are the curve the resolution was read from (masked and corrected when a mask
    was used); coordinates ``resolution_angstrom`` (Å, ``inf`` at shell 0) and, where they exist,
    ``fsc_unmasked``, ``fsc_masked``, ``fsc_randomized``, ``fsc_corrected``; attributes
    ``resolution_angstrom`` (the 0.143 crossing), ``resolution_unmasked_angstrom``,
    ``masked`` (0/1), ``randomize_from_angstrom`` (NaN if none), ``threshold``, ``notes``.
    """
    n = box_size // 2 + 1
    coords: dict[str, object] = {
        "shell": np.arange(n),
        "resolution_angstrom": ("shell", np.asarray(result.shell_resolution_angstrom, dtype=np.float64)),
        "fsc_unmasked": ("shell", np.asarray(result.fsc_unmasked, dtype=np.float64)),
    }
    for name, attr in (("fsc_masked", "fsc_masked"), ("fsc_randomized", "fsc_randomized_masked"), ("fsc_corrected", "fsc_corrected")):
        value = getattr(result, attr)
        if value is not None:
            coords[name] = ("shell", np.asarray(value, dtype=np.float64))
    da = xr.DataArray(np.asarray(result.fsc, dtype=np.float64), dims=("shell",), coords=coords, name="fsc")
    da["resolution_angstrom"].attrs["units"] = UNITS["resolution_angstrom"]
    rnd = result.randomize_from_angstrom
    da.attrs.update(
        resolution_angstrom=float(result.resolution_angstrom),
        resolution_unmasked_angstrom=float(result.resolution_unmasked_angstrom),
        masked=int(bool(result.mask_used)),
        randomize_from_angstrom=float("nan") if rnd is None else float(rnd),
        threshold=float(result.threshold),
        notes="; ".join(result.notes),
        pixel_size_angstrom=float(pixel_size_angstrom),
    )
    return da
