# scenetag: `make run` installs and classifies the default scene with the shipped model;
# `make test` installs and runs the tests.  SCENE=path.tif points `make run` at your own.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The shared real data (scenes/, chips/): `make test DATA=/path` or $SCENETAG_DATA, else beside the project.
DATA ?= $(or $(SCENETAG_DATA),../shared/data)
OUT ?= out
# The default scene, shipped in demo/ (demo/README.md: what it is, its licence).
DEMO := demo/planetscope_borneo_3m_analytic.tif
# Extra `run` options, e.g. RUN_ARGS="--bands 4,3,2 --overwrite".
RUN_ARGS ?=
# torch: the pair that installs from this machine's disk (see README, "Installing").
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: install install-all run test bench default-model clean help

help:
	@echo "make run   - install and classify the default scene (SCENE=path.tif for your own)"
	@echo "make test  - install everything and run the tests"
	@echo "make bench - throughput benchmark (bench/README.md)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e '.[cpu]'
	touch $@

$(VENV)/.all-installed: $(VENV)/.run-installed
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[cpu,torch,remote,openvino,dev]'
	touch $@

install: $(VENV)/.run-installed
install-all: $(VENV)/.all-installed

# The default scene is the PlanetScope scene of demo/; its bands are blue, green, red, NIR
# (its colour tags wrongly say RGB), hence --bands 3,2,1.  SCENE=path.tif for your own.
run: install
	@mkdir -p $(OUT)
	@if [ -n "$(SCENE)" ]; then scene="$(SCENE)"; bands=""; else scene="$(DEMO)"; bands="--bands 3,2,1"; fi; \
	name=$$(basename "$$scene" .tif); \
	echo "scenetag run $$scene -> $(OUT)/$$name.gpkg" >&2; \
	$(BIN)/python cli.py run "$$scene" -o "$(OUT)/$$name.gpkg" --overwrite $$bands $(RUN_ARGS)

# The tests find the real data through SCENETAG_DATA (tests/conftest.py); absent data skips, saying so.
# It is passed on only where named (DATA=... or $$SCENETAG_DATA): a named folder that is absent is an
# error, while the default beside the project may be absent on a fresh machine (the tests then skip).
test: install-all
	$(if $(or $(SCENETAG_DATA),$(filter-out file,$(origin DATA))),SCENETAG_DATA="$(abspath $(DATA))" )$(BIN)/python -m pytest

bench: install-all
	$(BIN)/python bench/bench_scene.py

# Reproduces model/default/scenetag-default.onnx from the shared chips (see its MODEL_CARD.md).
default-model: install-all
	PYTHON=$(BIN)/python SCENETAG_CHIPS=$(DATA)/chips/planet_amazon bash scripts/train_default.sh

clean:
	rm -rf $(OUT) .pytest_cache
