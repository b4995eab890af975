#!/usr/bin/env bash
# One run on a GPU host with no network, from the repository root, after bench/gpu_bundle.sh made .gpu/:
# bench/gpu.py's exactness, the cuda fidelity cases on a seeded random Gemma 3 270M, bench/gpu_probe.py's scans
# (top-p's cumsum run to run; row loops on several streams), then bench/gpu.py's throughput
# (PARTS=greedy,profile,modes,long,large to choose). The timeouts add up to under the device's 600 s a call.
# Every part writes to $OUT as it goes, so a run cut short keeps what it measured. DRY=1: on this CPU, small
# models (checks the script).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/log.txt"; }
DEV=cuda; SMALL=""; K=cuda
if [ "${DRY:-}" = 1 ]; then DEV=cpu; SMALL=--small; K="cpu and additive"; fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
rm -rf /tmp/repo /tmp/site /tmp/g3; mkdir -p /tmp/g3
if [ "${DRY:-}" != 1 ]; then
  pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl > "$OUT/pip.txt" 2>&1; log "pip rc=$?"
fi
cp .gpu/g3/*.json /tmp/g3/ && gunzip -c .gpu/g3/tokenizer.json.gz > /tmp/g3/tokenizer.json
# the repository without its saejobs/ folder, which would shadow the installed package of that name
cp -r . /tmp/repo && rm -rf /tmp/repo/saejobs /tmp/repo/.gpu /tmp/repo/.git
cd /tmp/repo
[ "${DRY:-}" != 1 ] && export PYTHONPATH=/tmp/site:/tmp/repo
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -c "import sys, torch, transformers, saejobs.engine.sweep, interp_engine; print(sys.version.split()[0], torch.__version__, transformers.__version__, torch.cuda.is_available(), saejobs.engine.sweep.__file__)" >> "$OUT/log.txt" 2>&1
log "env checked rc=$?"
timeout ${T_EXACT:-130} python3 bench/gpu.py --device $DEV $SMALL --config-dir /tmp/g3 --parts exact --out "$OUT/gpu-exact.json" > "$OUT/gpu-exact.txt" 2>&1
log "bench/gpu.py exact rc=$?"
SAEJOBS_FIDELITY_CONFIG_DIR=/tmp/g3 timeout ${T_FID:-170} python3 -m pytest tests/fidelity -k "$K" --confcutdir tests/fidelity \
  -o addopts="" -q -p no:cacheprovider -rA --durations=5 > "$OUT/fidelity.txt" 2>&1
log "fidelity rc=$?"
timeout ${T_PROBE:-30} python3 bench/gpu_probe.py --device $DEV $SMALL --config-dir /tmp/g3 --parts scans --out "$OUT/probe" \
  > "$OUT/probe.txt" 2>&1
log "bench/gpu_probe.py scans rc=$?"
timeout ${T_THRU:-200} python3 bench/gpu.py --device $DEV $SMALL --config-dir /tmp/g3 --parts ${PARTS:-throughput} --out "$OUT/gpu-throughput.json" > "$OUT/gpu-throughput.txt" 2>&1
log "bench/gpu.py throughput rc=$?"
