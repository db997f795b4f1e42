# Two entry points: `make demo` (set up + the main job) and `make test` (set up + the tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint corpus

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The sandbox for generated programs (src/puma_mdm/sandbox.py) needs bubblewrap and libseccomp.
$(STAMP): pyproject.toml constraints.txt
	command -v bwrap >/dev/null || ! command -v apt-get >/dev/null || \
		$(SUDO) apt-get install -y -q bubblewrap libseccomp2 || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q bubblewrap libseccomp2; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,hf]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/puma demo

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

# A real text corpus for `puma train --config text`: the King James Bible from Debian's
# bible-kjv-text (read with its `bible` program), one chapter per paragraph, one verse per line,
# without verse references. The library does not need it; only this target installs it.
CORPUS := data/corpus/kjv.txt

corpus: $(CORPUS)

$(CORPUS):
	command -v bible >/dev/null || $(SUDO) apt-get install -y bible-kjv bible-kjv-text
	mkdir -p $(dir $@)
	bible -f "Gen1:1-Rev22:21" | awk '{ split($$1, ref, ":"); \
		if (NR > 1 && ref[1] != chapter) print ""; chapter = ref[1]; \
		sub(/^[^ ]+ /, ""); print }' > $@.tmp
	mv $@.tmp $@
