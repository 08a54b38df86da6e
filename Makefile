# Two commands do all the set-up on a fresh machine:
#   make demo   installs kd-compile into .venv and runs the bundled glyphs example end to end
#   make test   installs kd-compile (with test tools) into .venv and runs the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# two test processes (pytest-xdist), one per core of a 2-core CI machine, each test file on one of them
# (its module fixtures built once; the Ray tests never run beside each other): ~6 minutes, not ~12
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: install demo test bench lint clean gpu-check

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

examples/glyphs/teacher.pt: | install
	$(BIN)/python examples/glyphs/train_teacher.py

demo: install examples/glyphs/teacher.pt
	$(BIN)/kd-compile examples/glyphs/teacher.pt --target 2080ti --max-params 62K --out runs/demo --force

test: install
	$(BIN)/ruff check kd_compile tests benchmarks examples
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# make bench: every benchmark whose figures the README quotes, each writing benchmarks/results/*.json
# (tests/test_readme_figures.py checks the README against those files). Hours on a 2-core CPU;
# run one part with e.g. `make bench-fidelity`.
BENCH_PARTS := bench-e2e bench-latency bench-ort bench-cpu bench-difficulty bench-fidelity bench-distill bench-stream \
	bench-strategies bench-scbo bench-kill
.PHONY: $(BENCH_PARTS)

bench: $(BENCH_PARTS)

bench-e2e: install examples/glyphs/teacher.pt
	$(BIN)/python benchmarks/e2e_glyphs.py --seeds 3 --max-params 62K
	$(BIN)/python benchmarks/e2e_glyphs.py --seeds 3 --max-params 62K --strategy turbo --results benchmarks/results/e2e_glyphs_turbo.json

bench-latency: install
	$(BIN)/python benchmarks/latency_accuracy.py
	$(BIN)/python benchmarks/help_ceiling.py
	$(BIN)/python benchmarks/latency_choices.py
	$(BIN)/python benchmarks/external_check.py
	$(BIN)/python benchmarks/fp32_leads.py

# ONNX Runtime repeatability (about a minute; run it alone: other processes move the figures)
bench-ort: install
	$(BIN)/python benchmarks/ort_stability.py

# the cpu target's measured tables (ONNX Runtime, eager PyTorch) and its calibration, and every measured
# CPU predicted from its datasheet (the bands of a CPU profile without a table); run it alone
bench-cpu: install
	$(BIN)/python benchmarks/cpu_table.py --write-calibration
	$(BIN)/python benchmarks/cpu_table.py --runtime torch --write-calibration
	$(BIN)/python benchmarks/cpu_table.py --small-check --write-calibration
	$(BIN)/python benchmarks/cpu_table.py --runtime torch --small-check --write-calibration
	$(BIN)/python benchmarks/cpu_transfer.py --measure-here 24 --write-calibration

bench-difficulty: install
	$(BIN)/python benchmarks/glyphs_difficulty.py --threads 1

bench-fidelity: install
	$(BIN)/python benchmarks/fidelity.py

bench-distill: install examples/glyphs/teacher.pt
	$(BIN)/python benchmarks/distill.py

bench-stream: install
	$(BIN)/python benchmarks/data_stream.py

# runs killed at random moments and resumed (about 17 + 12 min)
bench-kill: install examples/glyphs/teacher.pt
	$(BIN)/python benchmarks/kill_campaign.py --kills 16 --seed 0
	$(BIN)/python benchmarks/kill_campaign.py --example imagefolder --kills 16 --seed 0

# TuRBO with and without the learned (SCBO) constraint on the toy problem (about 15 min)
bench-scbo: install examples/glyphs/teacher.pt
	$(BIN)/python benchmarks/scbo_toy.py
	$(BIN)/python benchmarks/e2e_glyphs.py --seeds 3 --max-params 62K --target cpu --strategy turbo-m --budget 20 \
		--cli "--max-latency 0.5x" --out runs/scbo-cpu-learned --results benchmarks/results/scbo_cpu_learned.json
	$(BIN)/python benchmarks/e2e_glyphs.py --seeds 3 --max-params 62K --target cpu --strategy turbo-m --budget 20 \
		--cli "--max-latency 0.5x --strategy-options learn_constraints=false" --out runs/scbo-cpu-penalty \
		--results benchmarks/results/scbo_cpu_penalty.json

# the README's strategy table, in the runs it quotes (rows merge into strategies.json)
# the main table, then the 10-class table that only confirms its rankings (shipped GP settings;
# about 2 h 30 min of one core for each table; two at a time fit 2 cores). The model-fitting
# multi-fidelity strategies and mobo take minutes a seed, so --max-seconds stops adding seeds
# after 20 (mobo 15) minutes once 5 have run.
bench-strategies: install
	$(BIN)/python benchmarks/strategies.py --only random,sobol,lhs,evolution,turbo,turbo-m,bohb
	$(BIN)/python benchmarks/strategies.py --only random,lf-gpr,lf-gpr-hybrid,mfkd --max-seconds 1200 --min-seeds 5
	$(BIN)/python benchmarks/strategies.py --only random,lf-then-hf --max-seconds 540 --min-seeds 5
	$(BIN)/python benchmarks/strategies.py --only random,mobo --max-seconds 900 --min-seeds 5
	$(BIN)/python benchmarks/strategies.py --table benchmarks/data/nas_kd_glyphs10.jsonl --only random,sobol,lhs,evolution,turbo,turbo-m,bohb
	$(BIN)/python benchmarks/strategies.py --table benchmarks/data/nas_kd_glyphs10.jsonl --only random,lf-gpr,lf-gpr-hybrid,mfkd,lf-then-hf --max-seconds 1200 --min-seeds 5
	$(BIN)/python benchmarks/strategies.py --table benchmarks/data/nas_kd_glyphs10.jsonl --only random,mobo --max-seconds 900 --min-seeds 5

# on a machine with a CUDA GPU (not part of make bench): latency measured against predicted and
# training throughput, CPU against GPU (benchmarks/results/gpu_check.json)
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py

lint: install
	$(BIN)/ruff check kd_compile tests benchmarks examples

clean:
	rm -rf runs .pytest_cache .kd_cache
