# make demo: set up, build the demo dataset, train ResNet-50 on it, evaluate.
# make test: set up with the test extras (and Debian's chromium when missing), run the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The exact PyTorch this project is tested with; the package itself accepts torch>=2.4.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
CHROMIUM ?= /usr/bin/chromium

.PHONY: demo test lint clean

$(BIN)/rn50: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q $(TORCH_PINS) -e '.[demo,serve,test]'
	touch $@

demo: $(BIN)/rn50
	$(BIN)/rn50 data demo data/demo
	$(BIN)/rn50 train --config configs/demo.yaml
	$(BIN)/rn50 eval --checkpoint runs/demo/model_best.pth
	@echo
	@echo "Outputs in runs/demo/: config.yaml, training_log_*.txt, metrics.jsonl,"
	@echo "checkpoint_epoch_NNN.pth (every epoch), model_best.pth, curves.png and summary.json."
	@echo "See them all with: $(BIN)/rn50 runs"

# The browser tests of `rn50 app` (tests/test_app.py) drive Debian's chromium through
# Playwright. A file target: apt installs it only when it is missing (as root, else via sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

test: $(BIN)/rn50 $(CHROMIUM)
	$(BIN)/python -m pytest -q

lint: $(BIN)/rn50
	$(BIN)/ruff check src tests

clean:
	rm -rf runs/demo data/demo
