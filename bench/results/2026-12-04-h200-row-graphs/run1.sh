#!/usr/bin/env bash
# session 15 run 1: bench/gpu.py exact + cuda fidelity + throughput (incl. modes with row graphs), then probes
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T_EXACT=120 T_FID=110 T_THRU=200 PARTS=greedy,profile,modes,long,large bash .gpu/gpu_host.sh
cd /tmp/repo
export PYTHONPATH=/tmp/site:/tmp/repo HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s)
timeout 60 python3 bench/gpu_probe.py --device cuda --config-dir /tmp/g3 --out /tmp/probe --parts reductions > "$OUT/probe.txt" 2>&1
echo "[probe $(( $(date +%s) - T0 ))s] rc=$?" >> "$OUT/log.txt"
