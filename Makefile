# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast docs lint format setup slurm nginx clean bench-imagenette

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'  # the tested releases (pyproject: ranges)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/convnets demo

# The slurm tests start a real one-node cluster: Debian's slurm-wlm, installed here when missing.
slurm:
	scripts/install_slurm.sh

# The HTTP shard folder tests serve shards with a real nginx: Debian's package, installed here when missing.
nginx:
	scripts/install_nginx.sh

test: $(STAMP) lint slurm nginx docs
	$(BIN)/python -m pytest -q tests --durations=30

# The docs/ pages as a site, --strict: a broken link or anchor fails. Built into a temporary folder
# (never into the repository) and removed; its log is shown only on failure (--quiet would also
# silence the warnings --strict turns into errors). ~2 s.
docs: $(STAMP)
	@site=$$(mktemp -d); \
	if NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir "$$site" >"$$site.log" 2>&1; \
	then rm -rf "$$site" "$$site.log"; echo "docs: mkdocs build --strict passed"; \
	else cat "$$site.log"; rm -rf "$$site" "$$site.log"; exit 1; fi

# Ruff's linter and formatter (settings in pyproject.toml); `make format` applies both.
lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check --quiet src tests scripts

format: $(STAMP)
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/ruff format src tests scripts

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests -m "not slow"

# Time to accuracy on this machine's CPUs (the README's Imagenette row): ~15 min on 2 cores.
bench-imagenette: $(STAMP)
	$(BIN)/convnets bench imagenette --data ../shared/data/imagenette --out runs/bench-imagenette

clean:
	rm -rf runs .pytest_cache
