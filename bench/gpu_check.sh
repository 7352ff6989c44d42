#!/usr/bin/env bash
# One check of every CUDA branch, to run once wherever a GPU is at hand (offline; on one H100 the
# branches take about 3 minutes, the figures longer: pass --deadline to fit a lease): random-init
# RoBERTas built in code, one PASS/FAIL line per branch, and the figures (an 8-run grid, single run vs
# the reference loop and HF Trainer, synth, peak memory vs the estimate,
# 8 LoRA runs fused over one frozen encoder vs alone).
#
#   bash bench/gpu_check.sh            # on the GPU box (after bash bench/fetch_wheels.sh here; carry .whl/)
#   bash bench/gpu_check.sh --smoke    # the same on the CPU with tiny sizes (CI: tests/test_gpu_check.py)
#
# PYTHON picks the interpreter (default python3). The package's dependencies that the box lacks are
# installed from .whl/ (pip --no-index) when they do not import. With OUT set, all output also goes
# to $OUT/gpu_check.log. Exit status 1 when any line is a FAIL.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
if [ -n "${OUT:-}" ]; then
  exec > >(tee "$OUT/gpu_check.log") 2>&1
fi
if ! "$PY" -c "import textual, tinydb, datasets, orjson, peft" 2>/dev/null; then
  site=$(mktemp -d /tmp/stilts-site.XXXXXX)
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "FAIL wheels: the package's dependencies do not import and .whl/ is empty (run bench/fetch_wheels.sh)"
    exit 1
  fi
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      .whl/*.whl; then
    echo "FAIL wheels: pip could not install .whl/*.whl"
    exit 1
  fi
  export PYTHONPATH="$PYTHONPATH:$site"
  echo "INFO wheels: installed $(ls .whl/*.whl | wc -l) wheels from .whl/ into $site"
fi
"$PY" bench/gpu_check.py "$@"
