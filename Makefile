# agentwatch: `make test` as root sets everything up (scripts/setup.sh) and runs the tests.
VENV   := .venv
STAMP  := $(VENV)/.setup-stamp
PY     := $(VENV)/bin/python
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: setup test test-unit demo bench clean

# Always run: it takes half a second when nothing is missing, and it also
# re-mounts tracefs after a reboot.
setup:
	bash scripts/setup.sh

$(STAMP):
	bash scripts/setup.sh

test: setup
	$(PYTEST) tests

# No root needed once .venv exists (order-only: never reruns setup.sh on its own).
test-unit: | $(STAMP)
	$(PYTEST) tests/unit

demo: setup
	bash scripts/demo.sh

bench: setup
	$(PY) bench/run.py

# The daemon as a systemd service (scripts/install.sh): config and policy into /etc/agentwatch
# (an existing one is kept), the unit, /var/log/agentwatch; started when systemd runs.
# DESTDIR=dir installs below dir instead (no systemctl).
.PHONY: install uninstall
install: setup
	DESTDIR="$(DESTDIR)" bash scripts/install.sh

# Stops, disables and removes the unit; keeps /etc/agentwatch and /var/log/agentwatch.
uninstall:
	DESTDIR="$(DESTDIR)" bash scripts/install.sh --uninstall

clean:
	rm -rf $(VENV) *.egg-info build dist .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
