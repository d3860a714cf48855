# Two commands do all set-up on a fresh Debian machine:  make demo  |  make test
# Cluster users: create your own environment with the torch build of your cluster, then
# `pip install -e .` (see README "On a cluster").

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# This machine's local wheel store carries exactly these (CUDA build, runs on CPU too).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_CONFIG ?= configs/fmnist_demo.yaml
DEMO_BACKEND ?= local
PYTEST_ARGS ?=

.PHONY: demo test install data lint slurm-up slurm-down clean-runs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'" \
	       "(or set data.root to a folder with the four IDX .gz files)"; exit 1; \
	fi

demo: install data
	$(VENV)/bin/prism-hpc submit $(DEMO_CONFIG) --backend $(DEMO_BACKEND)

test: install data
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check prism_hpc tests benchmarks

slurm-up:
	slurm/localcluster.sh up

slurm-down:
	slurm/localcluster.sh down
