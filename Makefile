# Two entry points (see README.md): `make demo` and `make test`. Both create ./.venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UNETR := bundles/unetr_btcv/configs

.PHONY: install demo test clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first: `pip install torch==2.13.0` takes the local CPU build where one is provided; asking for an
# unpinned torch (as a dependency would) pulls the multi-GB CUDA build instead.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Train a reduced UNETR on the generated demo phantoms, then evaluate it and print the per-organ table.
demo: install
	$(BIN)/python -m monai.bundle run --config_file "['$(UNETR)/train.json','$(UNETR)/demo.json']"
	$(BIN)/python -m monai.bundle run --config_file "['$(UNETR)/inference.json','$(UNETR)/evaluate.json','$(UNETR)/demo.json']"

test: install
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf bundles/*/demo
