"""The labelled data model: names, dimensions and units of gmmsession's xarray datasets.

``particles`` (xarray.Dataset, dimension ``particle``, in the input file's order)
    coordinates: ``particle`` (0..n-1), ``image_name`` (str, as in the input, e.g.
    ``000001@Extract/job007/stack.mrcs``)
    variables (all per particle):

    ======================  =======  ================================================
    name                    units    meaning (RELION column)
    ======================  =======  ================================================
    rot_deg, tilt_deg,      degree   Euler angles (rlnAngleRot/Tilt/Psi); NaN if none
    psi_deg
    origin_x_angstrom,      Å        rlnOriginXAngst/YAngst (3.0 pixels converted)
    origin_y_angstrom
    defocus_u_angstrom,     Å        rlnDefocusU/V
    defocus_v_angstrom
    defocus_angle_deg       degree   rlnDefocusAngle
    phase_shift_deg         degree   rlnPhaseShift (0 if absent)
    ctf_bfactor_angstrom2   Å^2      rlnCtfBfactor (0 if absent)
    ctf_scale               1        rlnCtfScalefactor (1 if absent)
    optics_group            1        rlnOpticsGroup (1 if the file has no optics)
    half                    1        half set, 1 or 2 (rlnRandomSubset, alignments3D/split + 1)
    stack_path              path     resolved absolute path of the particle's stack
    stack_index             1        0-based index of the image in its stack
    ======================  =======  ================================================

    optional variables (present only where the source has them; see
    :data:`OPTIONAL_PARTICLE_VARIABLES`):

    ======================  =======  ================================================
    image_sign              1        float32 +1 or -1: the image reader multiplies each
                                     stored image by it to get RELION's contrast
                                     (protein bright). cryoSPARC's ``blob/sign``;
                                     absent for RELION sets (images used as stored)
    ======================  =======  ================================================

``optics`` (xarray.Dataset, dimension ``optics_group``; coordinate = RELION group number)
    ``optics_group_name`` (str), ``pixel_size_angstrom`` (Å), ``box_size`` (pixels),
    ``voltage_kv`` (kV), ``cs_mm`` (mm), ``amplitude_contrast`` (fraction).

``half_maps`` (xarray.DataArray, dims ``half`` = [1, 2], ``z``, ``y``, ``x``; coordinates in Å
    with 0 at voxel ``box // 2``; attribute ``pixel_size_angstrom``).
"""

from __future__ import annotations

__all__ = ["PARTICLE_VARIABLES", "OPTIONAL_PARTICLE_VARIABLES", "OPTICS_VARIABLES", "UNITS", "POSE_VARIABLES", "CTF_VARIABLES"]

POSE_VARIABLES = ("rot_deg", "tilt_deg", "psi_deg", "origin_x_angstrom", "origin_y_angstrom")
CTF_VARIABLES = (
    "defocus_u_angstrom",
    "defocus_v_angstrom",
    "defocus_angle_deg",
    "phase_shift_deg",
    "ctf_bfactor_angstrom2",
    "ctf_scale",
)
PARTICLE_VARIABLES = POSE_VARIABLES + CTF_VARIABLES + ("optics_group", "half", "stack_path", "stack_index")
# Not required by the readers (make_particles_dataset); each is documented in the table above.
OPTIONAL_PARTICLE_VARIABLES = ("image_sign",)
OPTICS_VARIABLES = ("optics_group_name", "pixel_size_angstrom", "box_size", "voltage_kv", "cs_mm", "amplitude_contrast")

UNITS = {
    "rot_deg": "degree",
    "tilt_deg": "degree",
    "psi_deg": "degree",
    "origin_x_angstrom": "Å",
    "origin_y_angstrom": "Å",
    "defocus_u_angstrom": "Å",
    "defocus_v_angstrom": "Å",
    "defocus_angle_deg": "degree",
    "phase_shift_deg": "degree",
    "ctf_bfactor_angstrom2": "Å^2",
    "ctf_scale": "1",
    "image_sign": "1",
    "pixel_size_angstrom": "Å",
    "box_size": "pixel",
    "voltage_kv": "kV",
    "cs_mm": "mm",
    "amplitude_contrast": "1",
    "z": "Å",
    "y": "Å",
    "x": "Å",
    "resolution_angstrom": "Å",
}
