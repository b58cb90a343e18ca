# One entry point for people and CI. `make help` lists the targets.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 3000
export BENTOML_CONFIG ?= configuration.yaml

.DEFAULT_GOAL := help

# Python reads compiled bytecode (.pyc, in __pycache__ folders that git ignores) instead of
# compiling every module it imports again. A machine that sets PYTHONDONTWRITEBYTECODE
# (this project's CI machines do) would otherwise compile BentoML, pandas and scikit-learn
# from source in every process: each server worker, each CLI call, each test process (a
# worker's start took 5.4 s of CPU instead of 2.3 s). So .venv is compiled when it is made,
# and the commands below may write the bytecode of the project's own modules.
unexport PYTHONDONTWRITEBYTECODE
export UV_COMPILE_BYTECODE := 1

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-17s %s\n", $$1, $$2}'

setup: $(VENV)/.synced ## Create .venv with exactly the packages in requirements.lock

# A .venv that has the batch group keeps it when it is synced again (a changed lock or
# Makefile): syncing requirements.lock alone would remove pyspark, and installing it again
# would make Spark's class archive stale (below).
$(VENV)/.synced: requirements.lock Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet uv==0.13.9
	$(VENV)/bin/uv pip sync --quiet --python $(PY) requirements.lock $(if $(wildcard $(VENV)/.batch-synced),requirements-batch.lock)
	touch $@

# Batch scoring on Spark needs pyspark (about 0.5 GB): its own lock group, added to .venv by
# the batch and test targets only, so that `make serve` on a fresh clone stays lean.
# With Java installed, it also writes Spark's class archive (scoring/spark_classes.py), which
# starts the scoring sessions' JVM about 2 s sooner; once per JVM and pyspark, else at once.
# Spark runs without it, so a failure to write it is said and does not stop the setup.
batch-setup: $(VENV)/.batch-synced ## Add pyspark (requirements-batch.lock) to .venv for python -m scoring --engine spark
	-$(PY) -m scoring.spark_classes

$(VENV)/.batch-synced: requirements-batch.lock $(VENV)/.synced
	$(VENV)/bin/uv pip install --quiet --python $(PY) -r requirements-batch.lock
	touch $@

train: setup ## Train every configured model tag that the model store lacks
	$(PY) -m training --configured

serve: train ## Set up, train if needed, and serve on 127.0.0.1:3000
	$(VENV)/bin/bentoml serve service:TabularModelServer --host $(HOST) --port $(PORT)

# Test files run in parallel processes, each file in one process (its servers are shared
# by its tests), in the order tests/conftest.py gives them (unit test files first, while
# the default models train, then the longest ones); the ten slowest tests are printed at
# the end of every run, and every test's time is in test-output/junit.xml (ignored by git;
# python -m tests.durations sums it per file).
TEST_PROCESSES ?= 3
PYTEST_PARALLEL := $(VENV)/bin/pytest -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder --durations=10 \
	--junitxml=test-output/junit.xml

test: setup tools batch-setup ## Run the whole test suite (unit, real servers, a real browser, Prometheus, Spark)
	$(PYTEST_PARALLEL)

tools: ## Install the Debian programs the tests drive (Chromium and its driver, Prometheus, Java)
	bash tests/system_tools.sh

unit: setup ## Run the fast unit tests only
	$(VENV)/bin/pytest -n 2 --durations=10 -m "not integration and not container"

docs-images: setup tools ## Regenerate the web page's screenshots in docs/images/ (a real browser)
	MODEL_SERVER_SCREENSHOTS=docs/images $(VENV)/bin/pytest tests/test_web_page.py

container-report: setup ## Build and run the image, and write bench/results/container.md
	MODEL_SERVER_CONTAINER_REPORT=bench/results/container.md $(VENV)/bin/pytest tests/test_container.py

SERVING_LOCK := $(VENV)/bin/uv pip compile --quiet --python-version 3.11 container/serving.in -c requirements.lock

lock: ## Re-pin requirements.lock from requirements.in (and the serving subset, and the batch group)
	$(VENV)/bin/uv pip compile --quiet --python-version 3.11 requirements.in -o requirements.lock
	$(SERVING_LOCK) -o container/requirements-serving.txt
	$(VENV)/bin/uv pip compile --quiet --python-version 3.11 requirements-batch.in -c requirements.lock -o requirements-batch.lock

lint: setup ## ruff and mypy
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy model_server training scoring bench service.py


bento: train ## Build the Bento (code, configuration, the configured models) into the BentoML store
	$(VENV)/bin/bentoml build --label git_revision=$$(git rev-parse HEAD)

image: train ## Build the Bento and its OCI image; without Docker: buildah (as root), saved to dist/
	PYTHON=$(PY) container/build_image.sh

bench: train ## Benchmark against the plain BentoML recipe; writes bench/results/report.md
	$(PY) -m bench.run

bench-compare: setup ## Two commits' servers side by side, interleaved (BASE=rev); writes bench/results/compare_commits.md
	$(PY) -m bench.compare_commits $(BASE)

bench-rollout: train ## p99 and errors at 64 clients while the routing changes; writes bench/results/rollout.md
	$(PY) -m bench.rollout

grpc-profile: train ## Where a gRPC call's CPU goes at 64 clients (py-spy, every worker); writes bench/results/grpc_profile.md
	$(PY) -m bench.grpc_profile

bench-batch: train batch-setup ## Batch scoring: local engine, Spark local[2], plain scikit-learn; writes bench/results/batch.md
	$(PY) -m bench.batch

bench-grpc-stream: train ## gRPC streaming against unary gRPC and JSON at 64 in flight; writes bench/results/grpc_stream.md
	$(PY) -m bench.grpc_stream

soak: train ## Five minutes at 64 clients; writes bench/results/soak.md
	$(PY) -m bench.soak

protos: setup ## Regenerate the Open Inference Protocol gRPC stubs (committed)
	cd model_server/transports/oip_proto && ../../../$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. grpc_predict_v2.proto
	sed -i 's/^import grpc_predict_v2_pb2/from . import grpc_predict_v2_pb2/' model_server/transports/oip_proto/grpc_predict_v2_pb2_grpc.py
	$(VENV)/bin/ruff format --quiet --isolated --line-length 120 model_server/transports/oip_proto

.PHONY: help setup batch-setup tools train serve test unit docs-images container-report lock lint protos bento image bench bench-compare bench-rollout bench-batch bench-grpc-stream grpc-profile soak
