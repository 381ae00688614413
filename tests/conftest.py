import os
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
