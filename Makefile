# Developer commands; `make help` lists them. CI (.ci/run) runs the same lint and test targets.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help install run test test-sqlite lint format bench migrate lock

help:  ## list the commands
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)  ## create .venv and install the bot with its dev tools from the constraints file
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'

run: install  ## start the bot (reads .env; SQLite by default)
	$(PY) -m bot run

migrate: install  ## apply database migrations to DATABASE_URL
	$(PY) -m bot migrate

test: install  ## run the test suite (SQLite and PostgreSQL on 127.0.0.1:5432), 6 workers
	$(PY) -m pytest -q -n 6 --dist worksteal $(PYTEST_ARGS)

test-sqlite: install  ## run the test suite without PostgreSQL
	BOT_TEST_SKIP_POSTGRES=1 $(PY) -m pytest -q -n 6 --dist worksteal $(PYTEST_ARGS)

lint: install  ## ruff format check, ruff check, mypy, hadolint, the compose file's schema
	$(VENV)/bin/ruff format --check bot tests bench migrations
	$(VENV)/bin/ruff check bot tests bench migrations
	$(VENV)/bin/mypy bot tests bench
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

format: install  ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff format bot tests bench migrations
	$(VENV)/bin/ruff check --fix bot tests bench migrations

bench: install  ## run the streaming benchmark (bench/results/latest.json)
	$(PY) -m bench

lock: install  ## regenerate requirements.lock (hashes, for the image) at the versions in constraints.txt
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
		--strip-extras --build-deps-for wheel --no-emit-index-url --no-emit-trusted-host --no-emit-find-links \
		-c constraints.txt -o requirements.lock pyproject.toml
