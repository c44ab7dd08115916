# Two commands do everything on a fresh machine:
#   make demo   create .venv, install, run the main job end to end on the sample data
#   make test   create .venv, install, run lint and the whole test suite
# Both are idempotent: the virtual environment is rebuilt only when a requirements file changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

DEMO_RUN := outputs/demo-lora
DEMO_EXPORT := outputs/demo-export
DEMO_RL := outputs/demo-rl
DEMO_QUESTION := Write the section "Worm Bin Guide" of "Worm Bin Guide".

demo: install
	$(PY) main.py create-samples data/samples
	$(PY) main.py extract data/samples/documents data/processed --val-ratio 0.25 --instruction-format
	rm -rf $(DEMO_RUN)  # a fresh run each time; train-lora refuses to mix two runs in one folder
	$(PY) main.py train-lora --log-level WARNING --train-data data/processed/chat/train.jsonl \
		--eval-data data/processed/chat/valid.jsonl --output-dir $(DEMO_RUN) \
		--learning-rate 3e-3 --epochs 15
	@echo "--- sample generations ($(DEMO_RUN)/samples.txt) ---"
	@cat $(DEMO_RUN)/samples.txt
	$(PY) main.py export --log-level WARNING --adapter $(DEMO_RUN) --output $(DEMO_EXPORT) \
		--format both --gguf-type f16 --force --no-progress
	@echo "Demo finished: training data in data/processed, adapter and metrics in $(DEMO_RUN)."
	@echo "GGUF for LM Studio (lms import FILE): $(DEMO_EXPORT)/demo-lora-f16.gguf"
	@echo '--- chat --model $(DEMO_EXPORT)/merged: $(DEMO_QUESTION) ---'
	@$(PY) main.py chat --log-level WARNING --model $(DEMO_EXPORT)/merged --temperature 0 \
		--max-new-tokens 64 --prompt '$(DEMO_QUESTION)'
	rm -rf $(DEMO_RL)  # a fresh run each time; train-rl refuses to start on top of another run
	$(PY) main.py train-rl --log-level WARNING --algorithm ppo --config configs/rl/CartPole-v1.yaml \
		--total-timesteps 30000 --output-dir $(DEMO_RL) --no-progress
	$(PY) main.py evaluate-rl --log-level WARNING --checkpoint $(DEMO_RL)/best_model.pt --episodes 5
	@echo "PPO agent, curves (returns.png, TensorBoard events) and summary.json in $(DEMO_RL)."

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: install
	$(PY) scripts/benchmark_extract.py
	$(PY) scripts/benchmark_finetune.py
	$(PY) scripts/benchmark_rl.py

clean:
	rm -rf $(VENV) outputs data/samples data/processed data/models
