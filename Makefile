# plm-tune developer tasks. `make test` works on a fresh machine: it builds .venv and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
EXTRAS ?= dev,dicom,deepspeed,qlora,real-tokenizer
# torch/torchvision pinned to the builds this project is tested with. pip fetches them from PyPI (on Linux the
# CUDA build: a venv of about 6 GB) unless `pip config list` names a local index or wheel folder that has them.
TORCH_PINS = torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test tiny-model lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# The offline radiology demo: a tiny PLM (built on first use in .cache/tiny-plm) learns to caption the DICOM
# files shipped with pydicom. The flags only spell out accelerate's defaults for one process without a config.
demo: install
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/radiology_lora.py --config recipes/configs/radiology_demo.yaml

test: install
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

tiny-model: install
	$(VENV)/bin/plm-tune tiny-model .cache/tiny-plm

# ruff alone, in its own small venv: linting never installs the torch stack.
LINT_VENV ?= .venv-lint
$(LINT_VENV)/bin/ruff:
	test -x $(LINT_VENV)/bin/python || $(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install --quiet "ruff>=0.15"

lint: $(LINT_VENV)/bin/ruff
	$(LINT_VENV)/bin/ruff check .

clean:
	rm -rf .cache .pytest_cache build *.egg-info $(LINT_VENV)
