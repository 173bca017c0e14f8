#!/usr/bin/env bash
# The GPU check of plm-tune on one lent CUDA GPU, from a fresh clone; every result goes to one file.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine: results in $OUT/gpu_check.txt (or ./)
#   bash benchmarks/gpu_check.sh results.txt      # the results file named
#   bash benchmarks/gpu_check.sh --smoke          # on a CPU, several minutes: checks this script, measures nothing
#   PYTHON=/path/to/venv/bin/python bash benchmarks/gpu_check.sh --smoke   # an existing environment, no install
#
# 0. the README's install, `make install` (.venv with torch and the extras: dev for pytest, dicom for the
#    DICOM files, real-tokenizer for PLM's tokenizer), unless PYTHON names an interpreter that has them. Its time
#    depends on the package index and is not in the 10 minutes below; where one command may run at most 10
#    minutes, run `make install` first in a call of its own (this script then finds it done).
# 1. the gpu-marked tests (pytest -m gpu);
# 2. benchmarks/gpu_throughput.py, sdpa: PLM-1B and -3B with LoRA, PLM-1B full; then PLM-1B LoRA with
#    flash-attention 2 (varlen packing) if `import flash_attn` works (flash-attn has no PyPI wheel, so it is never
#    installed here);
# 3. 50 steps of recipes/radiology_lora.py with recipes/configs/radiology_lora.yaml on a random-init PLM-1B at full
#    depth with the real tokenizer (plm-tune tiny-model --size 1B). Overridden, because this runs offline: the model
#    path, the data (the DICOM files that ship with pydicom, some deliberately broken: on_error skip, instead of
#    unsloth/Radiology_mini from the Hub) and output_dir; max_steps 50. Every other setting is the config's.
# Each part runs in its own process group with its own time limit (on an H100 they add up to 570 s); when the
# limit passes, the part gets TERM, KILL 10 s later, and whatever is left of its group is killed, so nothing
# survives into the next part. A failing part is written to the file and the next one still runs.
set -u
cd "$(dirname "$0")/.."
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
RESULTS=${1:-${OUT:-.}/gpu_check.txt}
WORK=$(mktemp -d)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
: > "$RESULTS"

GROUP=""  # the process group of the part running now
# On exit or interruption, the running part's group goes too, then the scratch folder.
trap '[ -n "$GROUP" ] && kill -KILL -- "-$GROUP" 2>/dev/null; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

log() { echo "$*" | tee -a "$RESULTS"; }
# part NAME SECONDS COMMAND...: run with a time limit in a new session (setsid: its own process group, which
# accelerate's child and DataLoader workers inherit); append its output's tail and its exit status.
part() {
  local name=$1 limit=$2 started rc
  shift 2
  log ""
  log "== $name ($(date -u +%H:%M:%S) UTC, limit ${limit} s)"
  started=$(date +%s)
  # Started in the background of a script (no job control), setsid is no group leader, so it does not fork:
  # $! is the session's leader and its process group id. timeout signals that whole group.
  setsid --wait timeout --kill-after=10 -s TERM "$limit" "$@" > "$WORK/$name.log" 2>&1 &
  GROUP=$!
  wait "$GROUP"
  rc=$?
  kill -KILL -- "-$GROUP" 2>/dev/null  # anything of the part still alive (a worker that ignored TERM)
  GROUP=""
  # Progress bars' carriage returns become line ends, so the bars (and warnings) go and the lines between stay.
  tr '\r' '\n' < "$WORK/$name.log" | grep -v -i -e "warn" -e "%|" | tail -n 40 >> "$RESULTS"
  case $rc in
    124 | 137) log "-- $name: stopped at its limit of ${limit} s (exit $rc)" ;;
    *) log "-- $name: exit $rc in $(( $(date +%s) - started )) s" ;;
  esac
  return "$rc"
}

log "plm-tune GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
  log "python: $PY (PYTHON is set: no install)"
else
  if ! part install 1800 make install; then
    log "make install failed (its log is above): nothing else can run."
    exit 1
  fi
  PY=.venv/bin/python
fi
$PY - >> "$RESULTS" 2>&1 <<'EOF'
import torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, CUDA {torch.version.cuda}")
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)")
EOF

GPU_TESTS=$(grep -l "mark.gpu" tests/test_*.py)  # only the files with gpu-marked tests: a quicker collection
if [ $SMOKE = 1 ]; then
  # The same commands on the tiny PLM (gpu_throughput.py --smoke) and a 1-layer PLM-1B, with CPU-sized limits.
  THROUGHPUT=(--smoke); STEPS=2
  LIMITS=(300 600 600 300 300 900)
  # One sample a step, one tile, no eval split: the config's batch of 4 x 4 images of 5 tiles, its eval and the
  # 128k-vocabulary generation afterwards would take most of an hour on 2 CPU cores.
  RADIOLOGY_SMOKE=(--per_device_train_batch_size 1 --gradient_accumulation_steps 1 --max_tiles 1 --eval_split 0
                   --eval_on_start false --eval_strategy no --dataloader_num_workers 0)
  LAYERS=(--text-layers 1 --vision-layers 1)
else
  THROUGHPUT=(--steps 6 --samples 24); STEPS=50
  LIMITS=(60 150 90 60 75 135)  # tests, throughput lora, full, flash, build PLM-1B, radiology: 570 s
  RADIOLOGY_SMOKE=()
  LAYERS=()
fi

part gpu-tests "${LIMITS[0]}" $PY -m pytest $GPU_TESTS -q -m gpu -p no:cacheprovider
part throughput-lora "${LIMITS[1]}" $PY benchmarks/gpu_throughput.py "${THROUGHPUT[@]}" --sizes 1B 3B \
  --methods lora --attn sdpa
part throughput-full "${LIMITS[2]}" $PY benchmarks/gpu_throughput.py "${THROUGHPUT[@]}" --sizes 1B --methods full \
  --attn sdpa
if $PY -c "import flash_attn" 2>/dev/null; then
  part throughput-flash "${LIMITS[3]}" $PY benchmarks/gpu_throughput.py "${THROUGHPUT[@]}" --sizes 1B \
    --methods lora --attn flash_attention_2
else
  log ""
  log "flash-attention: not installed (no PyPI wheel; build it with pip install flash-attn --no-build-isolation) — sdpa only"
fi
part build-plm-1b "${LIMITS[4]}" $PY -m plm_tune.apps.cli tiny-model "$WORK/plm-1b" --size 1B "${LAYERS[@]}"
part "radiology-$STEPS-steps" "${LIMITS[5]}" $PY -m accelerate.commands.launch --num_processes 1 --num_machines 1 \
  --mixed_precision no --dynamo_backend no recipes/radiology_lora.py --config recipes/configs/radiology_lora.yaml \
  --model_name_or_path "$WORK/plm-1b" --dicom_dir pydicom-testdata --on_error skip --max_steps $STEPS \
  --output_dir "$WORK/radiology" "${RADIOLOGY_SMOKE[@]}"

log ""
log "Results file: $RESULTS"
