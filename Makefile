# Paydrop: the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
BIN       := $(VENV)/bin
JUNIT     := build/junit
STEP      := $(BIN)/python scripts/junit_step.py $(JUNIT)
# The app and collection tests, on two workers (tests/app/conftest.py gives each
# its own database): 130 s instead of 236 s.
PYTEST    := $(BIN)/pytest tests -n 2 --junitxml=$(JUNIT)/pytest.xml
# Molecule scenarios `make test` runs, in order.
SCENARIOS ?= default production
# The steps `make test` runs, in order; the summary fails the run when one of
# them left no record. A step NAME runs `step.NAME`; `report.NAME` names the
# JUnit report (in $(JUNIT)) it must leave with at least one test in it.
# To add a step: append its name here and define its `step.` (and `report.`).
# With both scenarios, the one-host `default` runs in the background from the
# production scenario's converge on (scripts/run-molecule.sh --overlap): its step
# then waits for it and reports it. OVERLAP= runs them one after the other.
OVERLAP   ?= default
ifeq ($(OVERLAP)$(filter default,$(SCENARIOS))$(filter production,$(SCENARIOS)),defaultdefaultproduction)
MOLECULE_STEPS := molecule-production molecule-default
step.molecule-production = scripts/run-molecule.sh --overlap default production
step.molecule-default    = scripts/run-molecule.sh --collect default
else
MOLECULE_STEPS := $(SCENARIOS:%=molecule-%)
$(foreach s,$(SCENARIOS),$(eval step.molecule-$(s) = scripts/run-molecule.sh $(s)))
endif
TEST_STEPS := lint collection-build pytest bench-quick test-hosts $(MOLECULE_STEPS)
step.lint             = $(MAKE) --no-print-directory lint
step.collection-build = $(MAKE) --no-print-directory collection
step.pytest           = $(PYTEST)
report.pytest         = pytest.xml
step.test-hosts       = scripts/testhosts build
# The benchmark scripts on tiny loads, no goals: so they cannot rot (make bench is not a test).
step.bench-quick      = $(MAKE) --no-print-directory bench QUICK=1
$(foreach s,$(SCENARIOS),$(eval report.molecule-$(s) = molecule-$(s).xml))
# Skips the summary accepts, each with its reason (printed on every run).
SKIP_WAIVERS := tests/allowed-skips.toml
# Release id of the app image: the package version plus the commit.
VERSION   ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)-$(shell git rev-parse --short HEAD 2>/dev/null || echo dev)

export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: help venv system-deps lint docs test test-unit test-molecule hosts wheels image image-archive collection demo demo-check demo-down bench clean

help:
	@echo "make demo           install what is needed, start the sandbox, deploy the stack, print the shop's URL"
	@echo "make test           everything: lint, unit/app/browser tests, Molecule scenarios ($(SCENARIOS))"
	@echo "make lint           ruff, mypy, yamllint, argument specs, ansible-lint, bandit, hadolint, the CI workflow's schema"
	@echo "make test-unit      pytest: the app (real PostgreSQL, Redis, localstripe, Chromium) and the collection"
	@echo "make test-molecule  Molecule scenarios: $(SCENARIOS)"
	@echo "make hosts          build the offline Docker test-host images (reused when present)"
	@echo "make collection     build the paydrop.stack collection tarball"
	@echo "make wheels         build the offline wheelhouse for the app image from app/requirements.lock"
	@echo "make image          build the app image paydrop:$(VERSION) (no registry, no pip network)"
	@echo "make image-archive  save it to build/images/paydrop-$(VERSION).tar, which the app role ships to hosts"
	@echo "make demo-check     buy a demo product in the running sandbox with headless Chromium"
	@echo "make demo-down      remove the sandbox's containers (its generated secrets stay in .sandbox/)"
	@echo "make docs           render docs/architecture.svg from docs/architecture.dot (Graphviz)"
	@echo "make bench          benchmarks against the running sandbox, ratios to same-run baselines (QUICK=1: seconds)"

system-deps:
	@scripts/install-system-deps.sh

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel setuptools
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

lint: venv
	$(BIN)/ruff check $(wildcard app tests scripts bench molecule)
	$(BIN)/mypy
	$(BIN)/yamllint -s .
	$(BIN)/python scripts/check_argument_specs.py
	$(BIN)/python scripts/check_lockfiles.py
	scripts/architecture-diagram.sh --check
	$(BIN)/ansible-lint --profile production
	$(BIN)/bandit -q -r app/paydrop --severity-level medium
	$(BIN)/hadolint app/Dockerfile
	$(BIN)/check-jsonschema -q --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/check-jsonschema -q --builtin-schema vendor.github-actions .github/actions/*/action.yml

# The architecture diagram: edit docs/architecture.dot, then this (make lint
# fails while the checked-in SVG is not what the .dot renders to).
docs:
	scripts/architecture-diagram.sh

test-unit: venv
	$(PYTEST)

hosts: venv
	scripts/testhosts build

test-molecule: venv hosts
	scripts/run-molecule.sh $(SCENARIOS)

# Every step runs even when an earlier one fails, so the closing line counts
# everything; the summary exits non-zero if anything failed, is missing, ran
# no test, or skipped one that $(SKIP_WAIVERS) does not allow.
test: venv
	@rm -rf $(JUNIT) && mkdir -p $(JUNIT)
	-@$(foreach s,$(TEST_STEPS),$(STEP) $(s) $(if $(report.$(s)),--report $(report.$(s))) -- $(step.$(s));)
	@$(BIN)/python scripts/test_summary.py $(JUNIT) --waivers $(SKIP_WAIVERS) --expect $(TEST_STEPS)

wheels: venv
	scripts/build-wheels.sh

image: wheels
	scripts/testhosts ensure-engine
	docker build -f app/Dockerfile --build-arg VERSION=$(VERSION) \
	  --build-arg REVISION=$$(git rev-parse HEAD) -t paydrop:$(VERSION) .

# What the app role copies to hosts that lack the image (no registry needed).
image-archive: build/images/paydrop-$(VERSION).tar
build/images/paydrop-$(VERSION).tar:
	$(MAKE) --no-print-directory image VERSION=$(VERSION)
	@mkdir -p build/images
	docker save paydrop:$(VERSION) -o $@.tmp && mv $@.tmp $@

collection: venv
	@mkdir -p build
	$(BIN)/ansible-galaxy collection build --force --output-path build .

# The sandbox: the whole stack on one local test host, deployed with the real
# playbooks (inventories/sandbox), paying through localstripe. Prints the URL.
demo: system-deps venv
	@$(MAKE) --no-print-directory image-archive VERSION=$(VERSION)
	scripts/sandbox up $(VERSION)

# A real browser buys a demo product in the running sandbox.
demo-check:
	scripts/sandbox check

demo-down:
	scripts/sandbox down

# Benchmarks against the sandbox, started first when it is not up (bench/README.md).
# QUICK=1: tiny loads in seconds, no goals judged; without a sandbox it checks
# the harness on throw-away local pieces. Fails only when a benchmark cannot run.
bench: venv
	@if [ -z "$(QUICK)" ] && ! scripts/sandbox status >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory demo; fi
	$(BIN)/python -m bench $(if $(QUICK),--quick)

clean:
	rm -rf build
