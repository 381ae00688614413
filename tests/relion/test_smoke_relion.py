import subprocess

import pytest

from tests.conftest import requires_relion


@requires_relion
@pytest.mark.relion
def test_relion_programs_run():
    out = subprocess.run(["relion_reconstruct", "--version"], capture_output=True, text=True)
    assert "RELION" in (out.stdout + out.stderr)
