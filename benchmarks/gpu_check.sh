#!/usr/bin/env bash
# The checks that need a GPU, as one short script (run from the repository root on a CUDA machine whose python3
# holds torch, transformers, accelerate and peft; rlhfkit itself comes from src/):
#   1. the tiny pipeline end to end on the GPU — every stage, `auto` precision (bf16 autocast on Ampere+),
#      PPO with its default EMA, PPO-ptx, DPO, RLOO, best-of-n, label and eval on the GPU;
#   2. PPO and RLOO throughput (benchmarks/ppo_throughput.py, rlhfkit only) on the default model and a ~87M one
#      in bf16;
#   3. with LARGE=1, the `large` preset (a 29M-parameter Llama) end to end, PPO and PPO-ptx cut to
#      $LARGE_PPO_ITERS iterations (the preset's 200 would not fit one device call): per-step seconds and the
#      report, from which the full preset's time is extrapolated.
# TINY=0 skips 1. Writes tiny_report.json, ppo_throughput_gpu.json and large/ under $OUT (default /tmp/gpu_check).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, accelerate, peft; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())"
if [ "${TINY:-1}" = 1 ]; then
start=$(date +%s)
timeout "${PIPELINE_TIMEOUT:-300}" python3 -m rlhfkit.cli pipeline --preset tiny --out /tmp/gpu_tiny \
    --methods ppo ppo_ptx dpo best_of_n rloo 2>&1 | grep -v "━" | tail -30
echo "tiny pipeline: rc ${PIPESTATUS[0]}, $(($(date +%s) - start)) s"
cp /tmp/gpu_tiny/eval/report.json "$OUT/tiny_report.json" 2>/dev/null
fi
if [ "${LARGE:-0}" = 1 ]; then
    iters=${LARGE_PPO_ITERS:-40}
    printf 'ppo: {iterations: %s}\n' "$iters" > /tmp/large_cut.yaml
    start=$(date +%s)
    timeout "${LARGE_TIMEOUT:-420}" python3 -m rlhfkit.cli pipeline --preset large --config /tmp/large_cut.yaml \
        --out /tmp/gpu_large 2>&1 | grep -v "━" | tail -40
    echo "large preset (PPO cut to $iters iterations): rc ${PIPESTATUS[0]}, $(($(date +%s) - start)) s"
    mkdir -p "$OUT/large"
    cp /tmp/gpu_large/timings.json /tmp/gpu_large/config.yaml /tmp/gpu_large/eval/report.json \
        /tmp/gpu_large/eval/report.md /tmp/gpu_large/reward/eval.json "$OUT/large/" 2>/dev/null
    for step in gpt sft reward ppo ppo_ptx dpo; do
        cp "/tmp/gpu_large/$step/metrics.jsonl" "$OUT/large/$step.metrics.jsonl" 2>/dev/null
    done
    cat /tmp/gpu_large/timings.json 2>/dev/null
fi
python3 -c "from rlhfkit.training import make_accelerator; print('auto precision here:', make_accelerator().mixed_precision)"
timeout "${THROUGHPUT_TIMEOUT:-240}" python3 benchmarks/ppo_throughput.py --no-peers --parts training \
    --sizes default,100m --precision bf16 --iterations 3 --wait-quiet 0 --out "$OUT/ppo_throughput_gpu.json" 2>&1 |
    tail -25
echo "throughput: rc ${PIPESTATUS[0]}"
