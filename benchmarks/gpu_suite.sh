#!/usr/bin/env bash
# The GPU checks of acamkd-hf in one command, on a fresh one-GPU machine with only the project installed:
#
#     pip install -e . && bash benchmarks/gpu_suite.sh [results_file]
#
# Writes every benchmark's output to one file (default benchmarks/results/gpu_suite.txt) and ends with a summary of
# the RESULT lines and the targets checked. About 5-7 minutes on one H100/H200-class GPU; each step has its own time
# limit, so a hung step cannot eat the others' time. Targets (issue: fusion at about the cost of a plain feature loss):
#   - segmentation logits (DeepLabV3-R101 -> DeepLabV3-MobileNetV2, 512x1024, batch 2): ACAM-KD <= 1.05x MSE per step
#   - RT-DETR-scale neck levels (3 levels 80x80 / 40x40 / 20x20, 256 channels, batch 8): ACAM-KD <= 1.3x MSE
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu_suite.txt}"
mkdir -p "$(dirname "$out")"
: > "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0))" >> "$out" 2>&1 \
  || { echo "gpu_suite: no CUDA GPU visible to torch" | tee -a "$out"; exit 1; }

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*" | tee -a "$out"
  local start=$SECONDS
  timeout "$limit" "$@" >> "$out" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$out"
}

# 1. fusion memory: fused SDPA path vs naive attention, up to 100x100 tokens
step fusion_memory 60 python benchmarks/fusion_memory.py --device cuda
# 2. small CPU models on the GPU (fp32), the default and the sequence-reduced fusion
step small_fp32 60 python benchmarks/step_overhead.py --device cuda --teacher small-segformer --student tiny-segformer \
  --image-size 128 256 --points logits stage1 stage2 stage3 stage4 --no-breakdown --kv-reductions 1 2 4 auto
# 3. paper-scale segmentation, 50 steps per method: DeepLabV3-R101 -> DeepLabV3-MobileNetV2 at the logits,
#    random weights, 512x1024, batch 2, fp32 and bf16
step seg_paper_fp32 150 python benchmarks/step_overhead.py --device cuda --batch 2 --repeats 50 --warmup 3 \
  --kv-reductions 1 2 4 auto
step seg_paper_bf16 120 python benchmarks/step_overhead.py --device cuda --batch 2 --repeats 50 --warmup 3 --bf16 \
  --kv-reductions 1 2 4 auto --no-breakdown
# 4. RT-DETR-scale neck levels (stride 8/16/32 of a 640x640 image, 256 channels), fp32 and bf16
step necks_fp32 90 python benchmarks/step_overhead.py --device cuda --feature-only --feature-size 80 80 --levels 3 \
  --pyramid --num-masks 6 --kv-reductions 1 2 4 auto
step necks_bf16 90 python benchmarks/step_overhead.py --device cuda --feature-only --feature-size 80 80 --levels 3 \
  --pyramid --num-masks 6 --bf16 --kv-reductions 1 2 4 auto --no-breakdown
# 5. one paper-scale level (64x128 = 8,192 tokens, 256 channels), the CPU benchmark's --feature-only setting
step level_paper_fp32 60 python benchmarks/step_overhead.py --device cuda --feature-only --levels 1 \
  --kv-reductions 1 2 4 auto --no-breakdown

{
  echo
  echo "=== summary (RESULT lines, in order: fusion_memory, small_fp32, seg_paper_fp32, seg_paper_bf16, necks_fp32, necks_bf16, level_paper_fp32)"
  grep '^RESULT' "$out"
  echo "targets: seg_paper acamkd_over_mse <= 1.05 (the default, and each acamkd_r<R>); necks acamkd_over_mse <= 1.3"
} | tee -a "$out.summary"
cat "$out.summary" >> "$out" && rm -f "$out.summary"
