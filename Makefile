# Two entry points: `make quickstart` (train the README's main job) and `make test`. Both set up .venv first.
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup quickstart test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# These two builds are the ones that install together here (torchvision from PyPI needs its matching torch).
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	# The quickstart dataset (Fashion-MNIST) as a Debian package; elsewhere it is read from the Hub.
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist chromium chromium-driver >/dev/null || true; fi
	touch $@

# One compute thread per physical core, which accelerate would otherwise choose with a warning on every launch; -q
# leaves a refusal as train.py's one line instead of the launcher's traceback. ARGS: more flags, e.g.
# `make quickstart ARGS=--overwrite_output_dir` to train again over a finished run.
ARGS ?=
quickstart: setup
	$(VENV)/bin/accelerate launch -q --config_file configs/accelerate/cpu.yaml \
		--num_cpu_threads_per_process $$($(PY) -c "import psutil; print(psutil.cpu_count(logical=False) or 1)") \
		scripts/train.py --config configs/quickstart.yaml $(ARGS)

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -n 2 --durations=15

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check modeling_vit_custom scripts tests
