#!/usr/bin/env bash
# The GPU check of plm-tune on one lent CUDA GPU, in under 10 minutes; every result goes to one file.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine: results in $OUT/gpu_check.txt (or ./)
#   bash benchmarks/gpu_check.sh results.txt      # the results file named
#   bash benchmarks/gpu_check.sh --smoke          # on a CPU, a few minutes:  checks this script, measures nothing
#
# 1. the gpu-marked tests (pytest -m gpu);
# 2. benchmarks/gpu_throughput.py for PLM-1B and -3B, LoRA, bf16, sdpa; then flash-attention 2 (varlen
#    packing) if `flash-attn` installs from a wheel (a source build would not fit the 10 minutes);
# 3. 50 steps of the radiology recipe (recipes/radiology_lora.py, the demo's data) on a random-init PLM-1B
#    at full depth with the real tokenizer (plm-tune tiny-model --size 1B; needs the real-tokenizer extra).
# Each part has its own time limit (on the GPU they add up to 10 minutes); a failing part is written to the file and the next one still runs.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
RESULTS=${1:-${OUT:-.}/gpu_check.txt}
WORK=$(mktemp -d)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
: > "$RESULTS"

log() { echo "$*" | tee -a "$RESULTS"; }
# part NAME SECONDS COMMAND...: run with a time limit, append its output's tail and its exit status.
part() {
  local name=$1 limit=$2 started rc
  shift 2
  log ""
  log "== $name ($(date -u +%H:%M:%S) UTC, limit ${limit} s)"
  started=$(date +%s)
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  grep -v -i "warn" "$WORK/$name.log" | tail -n 40 >> "$RESULTS"
  log "-- $name: exit $rc in $(( $(date +%s) - started )) s"
}

log "plm-tune GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
$PY - >> "$RESULTS" 2>&1 <<'EOF'
import torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, CUDA {torch.version.cuda}")
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)")
EOF

GPU_TESTS=$(grep -l "mark.gpu" tests/test_*.py)  # only the files with gpu-marked tests: a quicker collection
if [ $SMOKE = 1 ]; then
  part gpu-tests 300 $PY -m pytest $GPU_TESTS -q -m gpu -p no:cacheprovider
  part throughput-smoke 300 $PY benchmarks/gpu_throughput.py --smoke --methods lora --json "$WORK/throughput.json"
  part build-plm-1b 300 $PY -m plm_tune.cli tiny-model "$WORK/plm-1b" --size 1B --text-layers 1 --vision-layers 1
  STEPS=2; TILES=1; BATCH=1; RADIOLOGY_LIMIT=300; EVAL=0  # no eval split: 128k-vocabulary eval is slow on a CPU
else
  part gpu-tests 90 $PY -m pytest $GPU_TESTS -q -m gpu -p no:cacheprovider
  part throughput-sdpa 165 $PY benchmarks/gpu_throughput.py --sizes 1B 3B --methods lora --steps 6 --samples 32 \
    --attn sdpa --json "$WORK/throughput-sdpa.json"
  if timeout 45 $PY -m pip install --quiet --only-binary :all: flash-attn >> "$WORK/flash-install.log" 2>&1 \
     && $PY -c "import flash_attn" 2>/dev/null; then
    part throughput-flash 75 $PY benchmarks/gpu_throughput.py --sizes 1B --methods lora --steps 6 --samples 32 \
      --attn flash_attention_2 --json "$WORK/throughput-flash.json"
  else
    log ""; log "== throughput-flash: skipped, flash-attn has no installable wheel here"
  fi
  part build-plm-1b 90 $PY -m plm_tune.cli tiny-model "$WORK/plm-1b" --size 1B
  STEPS=50; TILES=4; BATCH=4; RADIOLOGY_LIMIT=135; EVAL=0.1
fi

# The radiology recipe on the random PLM-1B: 448 px tiles (256 tokens each), so max_length is raised from the
# demo's 256 (sized for the tiny model's 4-token tiles).
part "radiology-$STEPS-steps" $RADIOLOGY_LIMIT $PY -m accelerate.commands.launch --num_processes 1 --num_machines 1 \
  --mixed_precision no --dynamo_backend no recipes/radiology_lora.py --config recipes/configs/radiology_demo.yaml \
  --model_name_or_path "$WORK/plm-1b" --build_tiny_if_missing false --max_steps $STEPS --max_tiles $TILES \
  --max_length 2048 --learning_rate 1e-4 --per_device_train_batch_size $BATCH --eval_on_start false --eval_split $EVAL \
  --report_to none --output_dir "$WORK/radiology"

log ""
log "Results file: $RESULTS"
rm -rf "$WORK"
