#!/usr/bin/env bash
# Every CUDA check of the library in one run, for a session that is lent a GPU for a few
# minutes (docs/benchmarks.md records the results). Run from the repository root on the GPU
# machine, whose python3 has torch, numpy, scikit-learn, numba, tokenizers and safetensors:
#
#     bash bench/cuda_check.sh [OUT_DIR] [LM_MINUTES]
#
# hmmlearn, the HMM benchmark's competitor, is installed from ./.whl when that folder holds its
# wheel. Each step has its own time limit so that one slow step cannot cost the others.
set -u
out=${1:-${OUT:-/tmp/cuda_check}}
lm_minutes=${2:-1}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    | tee "$out/device.txt"

step() {  # step NAME SECONDS COMMAND...: run, keep the log, never stop the script
    local name=$1 seconds=$2
    shift 2
    echo "== $name"
    timeout "$seconds" "$@" >"$out/$name.log" 2>&1
    echo "   exit $? ($name)"
    tail -n 25 "$out/$name.log"
}

# 1. the tests that need CUDA, all named *cuda* (the rest of the suite is CI's, on CPU)
step tests 240 python3 -m pytest -q -p no:cacheprovider -k cuda tests
# 2. the classical models against their CPU competitors, Cerebrum on the GPU
step gmm 120 python3 bench/gmm.py --device cuda --repeat 2 --json
step hmm 90 python3 bench/hmm.py --device cuda --repeat 2 --json
# 3. the language-model leaderboard at an equal (short) budget on the GPU
for family in $(python3 -c "from cerebrum.brain.language_model import language_families as f
print(' '.join(f()))"); do
    step "lm_$family" $((lm_minutes * 60 + 120)) python3 bench/lm.py --family "$family" \
        --minutes "$lm_minutes" --device cuda --eval-bytes 100000 --json
done
