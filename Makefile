# The two commands of the README: `make test` and `make book` (PROFILE=smoke|laptop|paper|auto);
# `make reference PROFILE=laptop` (committed reference runs) and `make site` (the website from them, executing nothing).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= auto

.PHONY: test book notebooks reference site bench bench-peers clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt -e .
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q

notebooks: $(VENV)/.installed
	$(PY) -m robustness_book run --all --profile $(PROFILE)

book: notebooks
	# figures drawn from committed measurements (not executed notebooks): the CIFAR-10 recipe study
	$(PY) -m robustness_book.recipe_study --figure book/_generated/recipe-study.png
	# results at a glance, from the results this run just made
	$(PY) -m robustness_book reference glance --profile $(PROFILE)
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going

# Every chapter at PROFILE into reference/<PROFILE>/: results, executed notebook, provenance with SHA-256s.
# Written only if every chapter succeeded (a failed chapter leaves the previous reference as it was).
reference: $(VENV)/.installed
	$(PY) -m robustness_book reference make --profile $(PROFILE)

# The published site from the committed references (laptop pages, paper beside them): executes no chapter.
# HTML in _build/site/_build/html.
site: $(VENV)/.installed
	$(PY) -m robustness_book.recipe_study --figure book/_generated/recipe-study.png
	$(PY) -m robustness_book reference site

bench: $(VENV)/.installed
	$(PY) -m robustness_book bench

# The peers (torchattacks, foolbox) live in their own venv: torchattacks pins an old requests. One pip command,
# so torch and torchvision resolve together as in the main venv.
PEERS_VENV := .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python

$(PEERS_VENV)/.installed: requirements-peers.txt pyproject.toml
	test -x $(PEERS_PY) || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_PY) -m pip install -r requirements-peers.txt -e .
	touch $@

bench-peers: $(PEERS_VENV)/.installed
	$(PEERS_PY) -m robustness_book bench --peers --profile laptop --json reference/bench/peers.json

clean:
	rm -rf _build book/executed book/_generated reference/.*.tmp-* reference/.*.old-*
