# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   -> creates .venv, installs gmmsession, runs the demo on the built-in simulated dataset
#   make test   -> creates .venv, installs gmmsession with test extras, runs the test suite
# TORCH_SPEC pins the torch build; on a CUDA machine `make demo TORCH_SPEC=torch` takes a CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: demo test install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/gmmsession demo --out $(DEMO_OUT)

test: install
	@# CPU builds of torch do not ship Triton; the tests run its kernels in Triton's interpreter.
	$(VENV)/bin/python -c "import triton" 2>/dev/null || $(VENV)/bin/pip install -q "triton==3.9.0"
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider
