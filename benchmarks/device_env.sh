# Sourced by the device scripts (benchmarks/device_*.sh) on the GPU machine: installs the wheels
# carried in .whl/ into /tmp/site and puts them, .devpkgs/ and the repository on PYTHONPATH.
# DEVROOT: the folder holding .whl/ and .devpkgs/ (default: the current one).
DEV=${DEVROOT:-$PWD}
if ls "$DEV"/.whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$DEV"/.whl/*.whl
  rm -f "$DEV"/.devpkgs/gemmi.py  # a placeholder that only lets imports pass where the wheel is absent
fi
export PYTHONPATH=/tmp/site:$DEV/.devpkgs:$PWD PYTHONUNBUFFERED=1
