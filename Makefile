# kcv: `make demo` runs the main job, `make demo-detection` the detection one, `make test` runs
# the tests. Each target creates .venv and installs the project into it on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Test processes (pytest-xdist); 2 suits the 2-core CI machine. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
# One test at a time to whichever worker is free (xdist's `load` otherwise hands out blocks of
# ~200 consecutive tests), with the tests marked `slow` collected first (tests/conftest.py):
# the long tests start early and the short ones even out the end.
TEST_DIST := --dist load --maxschedchunk 1

.PHONY: demo demo-detection test test-fast bench lint install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/quickstart_segmentation.py

# Faster R-CNN on synthetic shapes: COCO mAP, SavedModel + TFLite export, parity (runs/detection/).
demo-detection: $(STAMP)
	$(PY) examples/detection_quickstart.py

# pytest exits 5 when it collected nothing: that is a failure, not a pass.
test: $(STAMP)
	@$(PY) -m pytest tests -q -p no:cacheprovider -n $(TEST_WORKERS) $(TEST_DIST) --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

test-fast: $(STAMP)
	$(PY) -m pytest tests -q -n $(TEST_WORKERS) $(TEST_DIST) -m "not slow"

bench: $(STAMP)
	@for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: $(STAMP)
	$(PY) -m ruff check kcv custom_ops export tests examples benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
