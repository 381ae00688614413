"""Pure torch kernels: rotations, CTF, Fourier helpers, projection, reconstruction, FSC, masks, GMMs.

Tensors in, tensors out; batched over leading dimensions; CPU or CUDA.
"""

from gmmsession.kernels.conventions import (
    bfactor_to_sigma_angstrom,
    euler_relion_to_matrix,
    matrix_to_euler_relion,
    sigma_angstrom_to_bfactor,
)
from gmmsession.kernels.ctf import ctf_2d, electron_wavelength_angstrom, phase_flip
from gmmsession.kernels.device import resolve_device
from gmmsession.kernels.filters import (
    apply_bfactor_3d,
    crop_box_for_resolution,
    fourier_crop_2d,
    fourier_crop_3d,
    fourier_pad_2d,
    fourier_pad_3d,
    lowpass_2d,
    lowpass_3d,
)
from gmmsession.kernels.fourier import (
    fourier_shift_rfft_2d,
    irfft_centered_2d,
    irfft_centered_3d,
    rfft_centered_2d,
    rfft_centered_3d,
    rfft_frequencies_2d,
    rfft_frequencies_3d,
)
from gmmsession.kernels.fsc import (
    corrected_masked_fsc,
    frc_2d,
    fsc_3d,
    last_shell_above_threshold,
    phase_randomize_3d,
    randomization_shell,
    resolution_at_threshold,
    shell_index_rfft,
    shell_resolution_angstrom,
    shell_sums_rfft,
)
from gmmsession.kernels.gmm import (
    gaussian_mass_voxel_units,
    gaussians_rfft_3d,
    project_gaussians_rfft_2d,
    render_gaussians_3d,
)
from gmmsession.kernels.masks import soft_sphere_mask_3d, squared_distance_to_mask_3d, threshold_mask_3d
from gmmsession.kernels.projection import prepare_volume_for_projection, project_slices_rfft_2d, project_volume
from gmmsession.kernels.reconstruct import (
    FourierAccumulator,
    backproject_slices_rfft_2d,
    finalise_reconstruction,
    soft_mask_outside_sphere,
)
from gmmsession.kernels.rotations import (
    geodesic_angle_deg,
    matrix_to_quaternion,
    matrix_to_rotvec,
    quaternion_to_matrix,
    rotvec_to_matrix,
)

from gmmsession.kernels.gmm_fit import (
    crop_rfft_3d,
    fit_box_size,
    fourier_fit_loss,
    gaussians_rfft_3d_cropped,
    max_shell_for_resolution,
    nearest_neighbour_distances,
    shell_correlation_rfft_3d,
    shell_weights_rfft_3d,
)
from gmmsession.kernels.scoring import (
    crop_rfft_2d,
    frc_band_score,
    frc_per_ring,
    phase_flipped_spectra,
    pooled_band_correlation,
    ring_band_weights,
)

__all__ = [
    "bfactor_to_sigma_angstrom", "euler_relion_to_matrix", "matrix_to_euler_relion", "sigma_angstrom_to_bfactor",
    "ctf_2d", "electron_wavelength_angstrom", "phase_flip", "resolve_device",
    "apply_bfactor_3d", "crop_box_for_resolution", "fourier_crop_2d", "fourier_crop_3d", "fourier_pad_2d",
    "fourier_pad_3d", "lowpass_2d", "lowpass_3d",
    "fourier_shift_rfft_2d", "irfft_centered_2d", "irfft_centered_3d", "rfft_centered_2d", "rfft_centered_3d",
    "rfft_frequencies_2d", "rfft_frequencies_3d",
    "corrected_masked_fsc", "frc_2d", "fsc_3d", "last_shell_above_threshold", "phase_randomize_3d",
    "randomization_shell", "resolution_at_threshold", "shell_index_rfft", "shell_resolution_angstrom", "shell_sums_rfft",
    "gaussian_mass_voxel_units", "gaussians_rfft_3d", "project_gaussians_rfft_2d", "render_gaussians_3d",
    "soft_sphere_mask_3d", "squared_distance_to_mask_3d", "threshold_mask_3d",
    "prepare_volume_for_projection", "project_slices_rfft_2d", "project_volume",
    "FourierAccumulator", "backproject_slices_rfft_2d", "finalise_reconstruction", "soft_mask_outside_sphere",
    "geodesic_angle_deg", "matrix_to_quaternion", "matrix_to_rotvec", "quaternion_to_matrix", "rotvec_to_matrix",
    "crop_rfft_3d", "fit_box_size", "fourier_fit_loss", "gaussians_rfft_3d_cropped", "max_shell_for_resolution", "nearest_neighbour_distances", "shell_correlation_rfft_3d", "shell_weights_rfft_3d", "crop_rfft_2d", "frc_band_score", "frc_per_ring", "phase_flipped_spectra", "pooled_band_correlation", "ring_band_weights",
]
