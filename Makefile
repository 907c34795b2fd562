# facekit: the two commands the README opens with are `make report` and `make test`.
# Each builds the virtual environment first when it is missing or out of date.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.facekit-requirements
PROFILE ?= smoke
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: venv report test test-fast bench clean-reports

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip "setuptools>=68" wheel
	$(PY) -m pip install -r requirements.txt
	# weight-only packages whose own pins clash with ours: `#no-deps:` lines of requirements.txt
	sed -n 's/^#no-deps: *//p' requirements.txt | xargs -r $(PY) -m pip install --no-deps
	cp requirements.txt $(STAMP)

venv: $(STAMP)
	$(PY) -m pip install --no-deps --no-build-isolation -e . >/dev/null

# Main job: every notebook headless on the built-in ORL data, ending in reports/index.html.
report: $(STAMP)
	$(PY) -m facekit run --profile $(PROFILE)

# Tests: unit/integration tests plus every notebook under nbval (lax), one torch thread.
test: $(STAMP)
	FACEKIT_THREADS=1 $(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider

test-fast: $(STAMP)
	FACEKIT_THREADS=1 $(PY) -m pytest tests -m "not slow" -p no:cacheprovider

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b; done

clean-reports:
	rm -rf reports/executed reports/html reports/metrics reports/index.html
