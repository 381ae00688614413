"""Our voxel forward model against ``relion_project --ctf`` on a chiral map (handedness check)."""

import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from gmmsession.kernels.conventions import euler_relion_to_matrix
from gmmsession.kernels.ctf import ctf_2d
from gmmsession.kernels.fourier import rfft_frequencies_2d
from gmmsession.kernels.projection import project_volume
from tests.conftest import requires_relion

# rot, tilt, psi (deg), rlnOriginXAngst, rlnOriginYAngst (Å), defocus U, V (Å), angle (deg)
POSES = [
    (0.0, 0.0, 0.0, 0.0, 0.0, 10000.0, 10000.0, 0.0),
    (30.0, 60.0, -45.0, 7.5, -3.25, 12000.0, 11500.0, 20.0),
    (-120.0, 150.0, 80.0, -12.0, 9.0, 15000.0, 14000.0, 75.0),
    (45.0, 90.0, 0.0, 3.0, 14.5, 9000.0, 8800.0, 130.0),
    (170.0, 20.0, 100.0, -15.0, -15.0, 20000.0, 19000.0, 10.0),
    (-60.0, 110.0, -170.0, 0.5, 0.25, 11000.0, 10000.0, 160.0),
    (90.0, 180.0, 30.0, 10.0, -8.0, 13000.0, 12800.0, 45.0),
    (10.0, 75.0, 135.0, -6.0, 12.0, 16000.0, 15500.0, 90.0),
    (-150.0, 40.0, -90.0, 11.0, 4.0, 8000.0, 7800.0, 5.0),
    (75.0, 125.0, 60.0, -9.5, -13.0, 18000.0, 17500.0, 110.0),
]
VOLTAGE_KV, CS_MM, Q0 = 300.0, 2.7, 0.1


def correlations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.fixture(scope="module")
def relion_projections(tmp_path_factory):
    from tests.conftest import SHARED_DATA

    hand = SHARED_DATA / "maps" / "hand-vol.mrc"
    if not hand.exists():
        pytest.skip(f"{hand} is absent")
    work = tmp_path_factory.mktemp("relion_project")
    box = 64
    optics = pd.DataFrame(
        dict(
            rlnOpticsGroup=[1], rlnOpticsGroupName=["opticsGroup1"], rlnImagePixelSize=[1.0],
            rlnVoltage=[VOLTAGE_KV], rlnSphericalAberration=[CS_MM], rlnAmplitudeContrast=[Q0],
            rlnImageSize=[box], rlnImageDimensionality=[2],
        )
    )
    p = np.array(POSES)
    parts = pd.DataFrame(
        dict(
            rlnAngleRot=p[:, 0], rlnAngleTilt=p[:, 1], rlnAnglePsi=p[:, 2],
            rlnOriginXAngst=p[:, 3], rlnOriginYAngst=p[:, 4],
            rlnDefocusU=p[:, 5], rlnDefocusV=p[:, 6], rlnDefocusAngle=p[:, 7],
            rlnOpticsGroup=np.ones(len(p), int),
        )
    )
    starfile.write({"optics": optics, "particles": parts}, work / "ang.star", overwrite=True)
    subprocess.run(
        ["relion_project", "--i", str(hand), "--o", "proj", "--ang", "ang.star", "--ctf"],
        cwd=work, check=True, capture_output=True,
    )
    images = torch.from_numpy(mrcfile.read(work / "proj.mrcs").astype(np.float32))
    volume = torch.from_numpy(mrcfile.read(hand).astype(np.float32))
    return volume, images, p


def our_projections(volume: torch.Tensor, poses: np.ndarray) -> torch.Tensor:
    rot = euler_relion_to_matrix(torch.as_tensor(poses[:, :3], dtype=torch.float64)).float()
    origin = torch.as_tensor(poses[:, 3:5], dtype=torch.float32)
    t = lambda c: torch.as_tensor(poses[:, c], dtype=torch.float32)  # noqa: E731
    ctf = ctf_2d(rfft_frequencies_2d(volume.shape[-1], 1.0), t(5), t(6), t(7), VOLTAGE_KV, CS_MM, Q0)
    return project_volume(volume, rot, origin, 1.0, ctf=ctf)


@requires_relion
@pytest.mark.relion
def test_projections_match_relion_project(relion_projections):
    volume, relion_images, poses = relion_projections
    ours = our_projections(volume, poses)
    corr = correlations(ours, relion_images)
    # Same algorithm (trilinear, pad 2, sinc^2 pre-correction): measured >= 0.9999 for every image.
    assert float(corr.min()) >= 0.99, corr
    scale = (ours * relion_images).sum() / (ours * ours).sum()
    assert abs(float(scale) - 1) < 0.02, float(scale)  # same intensity scale (unnormalised DFTs)


@requires_relion
@pytest.mark.relion
def test_mirrored_hand_does_not_match(relion_projections):
    volume, relion_images, poses = relion_projections
    mirrored = our_projections(volume.flip(-1).contiguous(), poses)
    corr = correlations(mirrored, relion_images)
    # The mirror image is a different object: most projections decorrelate (a few views of a
    # roughly symmetric region may still correlate well).
    assert int((corr < 0.99).sum()) >= 8, corr
