#!/usr/bin/env bash
# The checks that need a GPU, as one short script (run from the repository root on a CUDA machine whose python3
# holds torch, transformers, accelerate and peft; rlhfkit itself comes from src/):
#   1. the tiny pipeline end to end on the GPU — every stage, `auto` precision (bf16 autocast on Ampere+),
#      PPO with its default EMA, PPO-ptx, DPO, RLOO, best-of-n, label and eval on the GPU;
#   2. PPO and RLOO throughput (benchmarks/ppo_throughput.py, rlhfkit only) on the default model and a ~87M one
#      in bf16.
# Writes tiny_report.json and ppo_throughput_gpu.json under $OUT (default /tmp/gpu_check).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, accelerate, peft; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())"
start=$(date +%s)
timeout "${PIPELINE_TIMEOUT:-300}" python3 -m rlhfkit.cli pipeline --preset tiny --out /tmp/gpu_tiny \
    --methods ppo ppo_ptx dpo best_of_n rloo 2>&1 | grep -v "━" | tail -30
echo "tiny pipeline: rc ${PIPESTATUS[0]}, $(($(date +%s) - start)) s"
cp /tmp/gpu_tiny/eval/report.json "$OUT/tiny_report.json" 2>/dev/null
python3 -c "from rlhfkit.training import make_accelerator; print('auto precision here:', make_accelerator().mixed_precision)"
timeout "${THROUGHPUT_TIMEOUT:-240}" python3 benchmarks/ppo_throughput.py --no-peers --parts training \
    --sizes default,100m --precision bf16 --iterations 3 --wait-quiet 0 --out "$OUT/ppo_throughput_gpu.json" 2>&1 |
    tail -25
echo "throughput: rc ${PIPESTATUS[0]}"
