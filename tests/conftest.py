import shutil
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def devices():
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    return out


@pytest.fixture(params=devices())
def device(request):
    return torch.device(request.param)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data folder {SHARED_DATA} is absent (it is only beside the project in CI and dev sessions)")
    return SHARED_DATA


def relion_available() -> bool:
    return shutil.which("relion_reconstruct") is not None and shutil.which("relion_project") is not None


requires_relion = pytest.mark.skipif(
    not relion_available(), reason="RELION 3.1 programs (relion_project, relion_reconstruct) are not installed; `apt-get install relion`"
)


def relion_half_maps(star, pixel_size_angstrom: float, out_dir, prefix: str = "relion") -> list:
    """``relion_reconstruct --ctf --subset 1|2`` of a star file (run in its folder): the two half maps as tensors."""
    import subprocess

    from gmmsession.data.io.mrc import read_map

    maps = []
    for subset in (1, 2):
        mrc = Path(out_dir) / f"{prefix}_half{subset}.mrc"
        subprocess.run(
            ["relion_reconstruct", "--i", str(star), "--o", str(mrc), "--ctf", "--subset", str(subset),
             "--angpix", str(pixel_size_angstrom)],
            check=True, capture_output=True, cwd=Path(star).parent, timeout=300,
        )
        maps.append(torch.as_tensor(read_map(mrc, pixel_size_angstrom=pixel_size_angstrom)[0]))
    return maps


def simulated_session(folder, *, n_particles, box_size, pixel_size_angstrom, snr, hinge_max_deg, seed, n_gaussians, fit_steps):
    """A small simulated dataset in ``folder``, opened on the CPU, reconstructed and with one GMM
    per half map; returns ``(session, simulated dataset)``."""
    import gmmsession as gs

    sim = gs.simulate(folder, n_particles=n_particles, box_size=box_size, pixel_size_angstrom=pixel_size_angstrom, snr=snr,
                      hinge_max_deg=hinge_max_deg, seed=seed)
    s = gs.Session.from_star(sim.particles_star, device="cpu")
    s.reconstruct(progress=False)
    s.build_gmm(n_gaussians=n_gaussians, n_iter=fit_steps, progress=False)
    return s, sim
