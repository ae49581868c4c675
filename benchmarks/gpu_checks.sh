#!/usr/bin/env bash
# The CUDA checks in one call, for a GPU machine lent for a few minutes (docs/benchmarks.md, "On a
# GPU"): the CUDA tests, then the search and end-to-end benchmarks, each under its own time limit so
# that one slow part cannot take the others' time: 9 minutes at most, about 6 on an H200.
#
# Usage, from the repository root: LASS_SHARED=/path/to/shared bash benchmarks/gpu_checks.sh
# (LASS_SHARED: the folder holding fixtures/jukebox; the tests skip the parity checks without it).
# Needs this package importable (installed, or PYTHONPATH=.) with a CUDA build of torch.
set -u
export PYTHONUNBUFFERED=1
run() { local limit=$1; shift; echo "=== $(date +%T) $*"; timeout "$limit" "$@"; echo "=== exit $? at $(date +%T)"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
run 120 python3 -m pytest -q -rs tests/test_prior.py tests/test_twins.py tests/test_vqvae.py tests/test_separate.py -k "cuda or dtype or device"
run 70 python3 benchmarks/search.py --full --beams 10 --windows 4 --steps 64
run 60 python3 benchmarks/search.py --full --beams 100 --windows 1 --steps 1024 --no-upstream
run 140 python3 benchmarks/search.py --full --beams 100 --windows 4 --steps 256 --no-upstream --compile
run 60 python3 benchmarks/search.py --model synth-drums-bass --beams 10 --windows 4 --steps 256
run 110 python3 benchmarks/separate.py --lengths 30,600 -- --model synth-drums-bass --sampler beam --beams 10
echo "=== done $(date +%T)"
