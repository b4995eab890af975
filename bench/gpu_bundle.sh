#!/usr/bin/env bash
# Prepare a run on a GPU host that has torch and no network (the device machine: torch 2.11+cu130, Python 3.12):
# .gpu/ (git-ignored; under 64 MiB) gets the wheels it lacks, the saejobs wheel, Gemma 3 270M's config and
# tokenizer (no weights: the benches and the cuda fidelity cases build the architectures with seeded random
# weights), and bench/gpu_host.sh, which runs there from the repository root:  bash .gpu/gpu_host.sh
# (bench/gpu.py's exactness, the cuda fidelity cases, bench/gpu.py's throughput; everything lands in $OUT).
set -eu
cd "$(dirname "$0")/.."
rm -rf .gpu && mkdir -p .gpu/whl .gpu/g3
PKGS="transformers huggingface-hub httpx2 httpcore2 h11 anyio sniffio trio outcome sortedcontainers truststore certifi
      idna tokenizers safetensors interp-engine einops accelerate regex psutil filelock pyyaml jinja2 markupsafe tqdm
      packaging typing-extensions pytest pluggy iniconfig attrs fsspec"
PINNED=$(for p in $PKGS; do python -c "import importlib.metadata as m; print('$p==' + m.version('$p'))"; done)
pip download -q --no-deps --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --only-binary=:all: -d .gpu/whl $PINNED
pip wheel -q --no-deps --no-build-isolation -w .gpu/whl .
G3=$(python -c "from bench.gpu import default_config_dir; print(default_config_dir())")
cp "$G3"/config.json "$G3"/generation_config.json "$G3"/tokenizer_config.json .gpu/g3/
gzip -9 -c "$G3"/tokenizer.json > .gpu/g3/tokenizer.json.gz
cp bench/gpu_host.sh .gpu/
du -sh .gpu
