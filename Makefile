# Two entry points (see README.md): `make demo` and `make test`. Both create ./.venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UNETR := bundles/unetr_btcv/configs

.PHONY: install demo test lint test-monailabel clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first: `pip install torch==2.13.0` takes the local CPU build where one is provided; asking for an
# unpinned torch (as a dependency would) pulls the multi-GB CUDA build instead. The `dicom` extra (highdicom,
# pydicom 3) stays out of `test`: MONAI Label's environment below pins pydicom 2.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,dicom]"
	touch $@

install: $(VENV)/.installed

# Train a reduced UNETR on the generated demo phantoms, then evaluate it and print the per-organ table.
demo: install
	$(BIN)/python -m monai.bundle run --config_file "['$(UNETR)/train.json','$(UNETR)/demo.json']"
	$(BIN)/python -m monai.bundle run --config_file "['$(UNETR)/inference.json','$(UNETR)/evaluate.json','$(UNETR)/demo.json']"
	@printf '%s\n' "" "The demo model is bundles/unetr_btcv/demo/models/model.pt (outputs in bundles/unetr_btcv/demo/;" \
	  "make clean-demo removes them). It is the reduced demo network: every command names configs/demo.json. Next:" "" \
	  "  # segment your own CT (a file, a DICOM series folder, or a folder of them)" \
	  "  $(BIN)/python -m monai.bundle run --config_file \"['$(UNETR)/inference.json','$(UNETR)/demo.json']\" --dataset_dir /path/to/ct --output_dir out/" \
	  "  # score it on the demo phantoms' validation cases (demo/leaderboard/leaderboard.md)" \
	  "  $(BIN)/python -m common.tools.leaderboard --bundles unetr_btcv --config unetr_btcv=$(UNETR)/demo.json --out bundles/unetr_btcv/demo/leaderboard" \
	  "  # export to ONNX (one file: graph and weights), package as a self-contained bundle" \
	  "  $(BIN)/python -m common.tools.export onnx --bundle unetr_btcv --ckpt bundles/unetr_btcv/demo/models/model.pt --config $(UNETR)/demo.json --out bundles/unetr_btcv/demo/unetr_demo.onnx" \
	  "  $(BIN)/python -m common.tools.package --bundle unetr_btcv --ckpt bundles/unetr_btcv/demo/models/model.pt --config $(UNETR)/demo.json --out bundles/unetr_btcv/demo/dist"

# The test run prints how long it took and its slowest tests. Its tests run in TEST_WORKERS processes (pytest-xdist),
# a test file to a process: most of a test's time is a subprocess starting and importing, which the second core
# overlaps (1.4x on 2 cores); each worker holds a few GB at most. Python's UTF-8 mode: a library in the session may
# set the C locale, after which torch's inductor fails to read its own (UTF-8) kernel templates.
TEST_WORKERS ?= 2
test: install
	@start=$$(date +%s); PYTHONUTF8=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15; rc=$$?; \
	  echo "make test: $$(( $$(date +%s) - start )) s"; exit $$rc

# ruff, configured in pyproject.toml (line length 120, as MONAI): lint, and check the formatting
# (`$(BIN)/ruff format .` applies it)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# MONAI Label 0.8.5 needs torchvision, which has no CPU build here: its tests get their own environment with the
# CUDA build of torch from PyPI (about 8 GB, 5 minutes). `--isolated` keeps pip away from the local CPU wheel
# (PIP_FIND_LINKS), whose torch would not match torchvision's CUDA ops. MONAI Label 0.8.5 leaves pydicom and
# the DICOM clients unpinned, and their newest releases no longer fit together (pydicom-seg needs pydicom 2).
# `--no-cache-dir`: the CUDA wheels would otherwise be kept a second time in pip's cache. The install needs about
# 11 GB of free disk at its peak (7.5 GB installed plus the wheels being unpacked); MLDISK_GB is checked first so a
# full disk is named as such instead of failing inside pip with Errno 28.
MLVENV ?= .venv-monailabel
MLDISK_GB ?= 12
MLPIP := $(MLVENV)/bin/pip install --quiet --isolated --no-cache-dir --cert $(or $(PIP_CERT),/etc/ssl/certs/ca-certificates.crt)

$(MLVENV)/bin/python:
	$(PYTHON) -m venv $(MLVENV)

$(MLVENV)/.installed: pyproject.toml | $(MLVENV)/bin/python
	@for d in $(MLVENV) $${TMPDIR:-/tmp}; do \
	  free=$$(df -Pk "$$d" | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  if [ "$$free" -lt $(MLDISK_GB) ]; then \
	    echo "test-monailabel: the MONAI Label environment (CUDA build of torch) needs about $(MLDISK_GB) GB of free disk;" \
	         "$$free GB free at $$d" >&2; exit 1; fi; done
	$(MLPIP) torch==2.13.0 torchvision==0.28.0
	$(MLPIP) monailabel==0.8.5 pydicom==2.4.4 dicomweb-client==0.59.1 pynetdicom==2.0.2 -e ".[test]"
	touch $@

test-monailabel: $(MLVENV)/.installed
	BTCV_REQUIRE_MONAILABEL=1 $(MLVENV)/bin/python -m pytest -q tests/monailabel_env

clean-demo:
	rm -rf bundles/*/demo
