# Tympan: `make demo` and `make test` work on a fresh machine (they install first).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU wheel of torch; pinned again in every pip call so pip never swaps it
# for a newer (multi-GB CUDA) build while resolving other packages.
TORCH  := torch==2.13.0
# hydrogen-data (GMRockKit) and sonic-pi-samples (CC0/CC-BY one-shots): recorded hits for tests and the real-hit evaluation.
# chromium-headless-shell: the browser of the page test (Playwright drives it).
SYSTEM_PACKAGES := libportaudio2 jackd2 hydrogen-data sonic-pi-samples chromium-headless-shell
STAMP  := $(VENV)/.installed

.PHONY: install system-packages demo test bench bench-host bench-jtfs bench-train bench-match eval-match eval-real bench-server bench-shutdown train-default default-onnx default-index gpu-wheels campaign-smoke clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(MAKE) --no-print-directory system-packages
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Tympan needs Python >= 3.11; '$(PYTHON)' is $$($(PYTHON) --version 2>&1). Pass PYTHON=python3.11 or newer."; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet $(TORCH) -e ".[dev]"
	@touch $(STAMP)

# Audio (PortAudio for sounddevice) and the JACK server used for real-time tests.
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing system packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
	  echo "Tympan needs the system packages: $$missing"; \
	  echo "install them with: sudo apt-get install $$missing   (then run make again)"; exit 1; \
	fi

demo: install
	$(VENV)/bin/tympan demo

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: install
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

bench: install
	$(PY) benchmarks/bench_synth.py

# The live host through JACK (starts its own JACK servers; ~8 minutes).
bench-host: install
	$(PY) benchmarks/bench_host.py

# Tympan's JTFS and metric M against the kymatio-dev reference (long: `--quick` for a smoke run).
bench-jtfs: install
	$(PY) benchmarks/bench_jtfs.py

bench-train: install
	$(PY) benchmarks/bench_train.py

# Matching time per file (encoder-only, refinement; model load apart).
bench-match: install
	$(PY) benchmarks/bench_match.py

# Retrain the shipped default model end to end and install it in matcher/models/
# (configs/default-cpu.toml, then configs/default-finetune.toml on recorded hits, the
# test-split score, the export with ONNX; resumable: run it again after a stop).
train-default: install
	$(PY) tympan_cli.py train default --install

# (Re)build the shipped dense sound index of `tympan match`'s default search: 20480 Sobol
# points, the PCA of their JTFS (~1.5 h on 2 CPU cores; resumable: shards in
# matcher/models/default-index.npz.parts/, which can be deleted once it is written).
default-index: install
	$(PY) tympan_cli.py train sound-index

# Rebuild the shipped model's encoder-only ONNX graph (after replacing default.tympan; ~1 min).
default-onnx: install
	$(PY) tympan_cli.py train export-onnx matcher/models/default.tympan

# Match quality on synthetic and GMRockKit hits: random / nn / encoder / encoder+refine
# (~15 minutes; builds the NN index once, ~12 more).
eval-match: install
	$(PY) benchmarks/eval_match.py

# Match quality on recorded hits only: every match method (and `tympan match`'s default) on
# GMRockKit and the sonic-pi one-shots, in JTFS, MSS and auraloss distance, wins against nn,
# p50/p95 time (~25 minutes on 2 CPU cores; the NN index, shared with eval-match, ~12 more).
eval-real: install
	$(PY) benchmarks/eval_real.py

# tympan serve through JACK: drop-to-parameters latency, underflows idle vs matching (~3 min).
bench-server: install
	$(PY) benchmarks/bench_server.py

# Ctrl-C to exit of tympan play and tympan serve under a CPU hog: 20 runs each (~10 min).
bench-shutdown: install
	$(PY) benchmarks/bench_shutdown.py

# The wheels a lent GPU machine lacks (its Python is 3.12; it reaches no package index).
# They go to .whl/ (git-ignored), which device calls carry: see docs/results.md.
GPU_WHEELS := kymatio==0.3.0 nnAudio==0.3.4 pedalboard==0.9.26 appdirs==1.4.4 configparser==7.3.0 tomli-w==1.2.0
gpu-wheels: install
	$(PIP) download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	@ls -l .whl

# The campaign's whole sequence on this CPU at toy scale (~1 minute): preflight, metric,
# two runs, evaluation, half-precision export, pack, unpack, report into /tmp.
campaign-smoke: install
	rm -rf /tmp/tympan-campaign-smoke
	$(PY) tympan_cli.py train campaign --plan configs/tiny/campaign.toml --device cpu \
	  --state /tmp/tympan-campaign-smoke/device --pack /tmp/tympan-campaign-smoke/out --quiet
	$(PY) tympan_cli.py train campaign --unpack /tmp/tympan-campaign-smoke/out \
	  --state /tmp/tympan-campaign-smoke/state
	$(PY) tympan_cli.py train campaign-report --state /tmp/tympan-campaign-smoke/state \
	  --docs /tmp/tympan-campaign-smoke/docs --configs /tmp/tympan-campaign-smoke/docs/ran

clean:
	rm -rf $(VENV) build *.egg-info tympan-demo benchmarks/results test-artifacts
	find . -name __pycache__ -prune -exec rm -rf {} +
