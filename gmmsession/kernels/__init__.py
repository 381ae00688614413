"""Pure torch kernels: rotations, CTF, Fourier helpers, projection, reconstruction, FSC, masks.

Tensors in, tensors out; batched over leading dimensions; CPU or CUDA.
"""

from gmmsession.kernels.conventions import (
    euler_relion_to_matrix,
    matrix_to_euler_relion,
)
from gmmsession.kernels.ctf import ctf_2d, electron_wavelength_angstrom, phase_flip
from gmmsession.kernels.fourier import (
    fourier_shift_rfft_2d,
    irfft_centered_2d,
    irfft_centered_3d,
    rfft_centered_2d,
    rfft_centered_3d,
    rfft_frequencies_2d,
    rfft_frequencies_3d,
)
from gmmsession.kernels.rotations import (
    geodesic_angle_deg,
    matrix_to_quaternion,
    matrix_to_rotvec,
    quaternion_to_matrix,
    rotvec_to_matrix,
)

__all__ = [
    "euler_relion_to_matrix",
    "matrix_to_euler_relion",
    "ctf_2d",
    "electron_wavelength_angstrom",
    "phase_flip",
    "fourier_shift_rfft_2d",
    "irfft_centered_2d",
    "irfft_centered_3d",
    "rfft_centered_2d",
    "rfft_centered_3d",
    "rfft_frequencies_2d",
    "rfft_frequencies_3d",
    "geodesic_angle_deg",
    "matrix_to_quaternion",
    "matrix_to_rotvec",
    "quaternion_to_matrix",
    "rotvec_to_matrix",
]
