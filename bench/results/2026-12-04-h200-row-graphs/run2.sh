#!/usr/bin/env bash
# session 15 run 2: reductions/sampler probe, cuda fidelity, throughput modes + long + large
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/log.txt"; }
rm -rf /tmp/repo /tmp/site /tmp/g3; mkdir -p /tmp/g3
pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl > "$OUT/pip.txt" 2>&1; log "pip rc=$?"
cp .gpu/g3/*.json /tmp/g3/ && gunzip -c .gpu/g3/tokenizer.json.gz > /tmp/g3/tokenizer.json
cp -r . /tmp/repo && rm -rf /tmp/repo/saejobs /tmp/repo/.gpu /tmp/repo/.git
cd /tmp/repo
export PYTHONPATH=/tmp/site:/tmp/repo HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
timeout 45 python3 bench/gpu_probe.py --device cuda --config-dir /tmp/g3 --out /tmp/probe --parts reductions > "$OUT/probe.txt" 2>&1
log "probe rc=$?"
SAEJOBS_FIDELITY_CONFIG_DIR=/tmp/g3 timeout 80 python3 -m pytest tests/fidelity -k cuda --confcutdir tests/fidelity \
  -o addopts="" -q -p no:cacheprovider -rA --durations=5 > "$OUT/fidelity.txt" 2>&1
log "fidelity rc=$?"
timeout 210 python3 bench/gpu.py --device cuda --config-dir /tmp/g3 --parts modes,long,large --out "$OUT/gpu-throughput.json" > "$OUT/gpu-throughput.txt" 2>&1
log "throughput rc=$?"
