#!/usr/bin/env bash
# Everything measured on a GPU machine, in one command (docs/accelerator.md). On an H200 (2026-12-04) the
# suite alone needs about 7 minutes, most of it the Flax reference's train-step compiles (74-82 s each), so
# the default limits add up to about 12 minutes: split a run with --only to fit a device budget.
#   1. the machine: nvidia-smi, jax.devices(), jax / jaxlib / CUDA / cuDNN versions;
#   2. python -m benchmarks --suite accelerator, with a jax.profiler trace of one step (or generation) of each
#      side of every workload (summarised in its JSON, raw traces packed in profiles.tar.gz);
#   3. python -m benchmarks.dpa: cuDNN attention against the einsum path (loss, gradients, speed);
#   4. python -m benchmarks.train_speed: the default `t5vae train` at batch 64 and 1024, 60 s each;
#   5. (only when asked: --only ...,variants) python -m benchmarks.variants $VARIANT_ARGS: our train step
#      under other settings (default remat dots against none), without the reference.
# Every JSON, the log and the traces go to OUTDIR. A stage that runs past its limit is stopped and the next
# one starts; each stage's JSON keeps what it measured before it was stopped.
#
#   bash benchmarks/gpu_run.sh OUTDIR [--tiny] [--only STAGES] [-- SUITE_ARGS...]
#
# --tiny: tiny shapes and short runs, for checking this script on the CPU. --only: comma-separated subset of
# env,suite,dpa,train,variants (default env,suite,dpa,train). LIMITS_OVERRIDE="E,S,D,T,V" overrides the stages' time
# limits in seconds (the suite starts no workload in its last 60 s). Arguments after -- go to the accelerator suite (e.g. --only
# generate_bf16 --kernels dpa). Wheels the machine lacks travel in .whl/ (carry it; benchmarks/NOTES.md
# says which): they are installed into /tmp/site first.
set -uo pipefail
OUTDIR=${1:?usage: bash benchmarks/gpu_run.sh OUTDIR [--tiny] [--only STAGES] [-- SUITE_ARGS...]}
shift
TINY=() STAGES=env,suite,dpa,train SUITE_ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --tiny) TINY=(--tiny) ;;
    --only) STAGES=${2:?--only needs a list}; shift ;;
    --) shift; SUITE_ARGS=("$@"); break ;;
    *) echo "gpu_run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$OUTDIR" || exit 1
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG=$OUTDIR/run.log
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_run.sh: installing .whl/ failed" | tee -a "$LOG"; exit 1; }
  export PYTHONPATH=$PWD:/tmp/site
fi

wants() { [[ ",$STAGES," == *",$1,"* ]]; }
stage() {  # stage NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to run.log, report rc and seconds
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  echo "== $name (limit ${limit} s) ==" | tee -a "$LOG"
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  echo "== $name: rc $rc in $((SECONDS - t0)) s ==" | tee -a "$LOG"
}

if [ ${#TINY[@]} -gt 0 ]; then
  LIMITS=(60 600 300 300 300) TRAIN=(--batch-sizes 8,16 --seconds 25)
else
  LIMITS=(30 450 80 160 120) TRAIN=(--batch-sizes 64,1024 --seconds 60)
fi
[ -n "${LIMITS_OVERRIDE:-}" ] && IFS=, read -r -a LIMITS <<<"$LIMITS_OVERRIDE"
read -r -a VARIANTS <<<"${VARIANT_ARGS:---set remat=dots --set remat=none}"
wants env && stage env "${LIMITS[0]}" bash -c "nvidia-smi; $PY - <<'EOF'
import jax
jax.print_environment_info()
print('devices:', jax.devices())
try:
    from jax._src.lib import cuda_versions
    print('cuDNN', cuda_versions.cudnn_get_version(), 'CUDA runtime', cuda_versions.cuda_runtime_get_version())
except Exception as e:
    print('cuDNN version: unknown', e)
import transformers, flax
print('transformers', transformers.__version__, 'flax', flax.__version__)
EOF"
wants suite && stage suite "${LIMITS[1]}" $PY -m benchmarks --suite accelerator "${TINY[@]}" \
  --json "$OUTDIR/accelerator.json" --profile /tmp/gpu_run_profiles \
  --deadline-minutes "$(awk "BEGIN { print (${LIMITS[1]} - 60) / 60 }")" "${SUITE_ARGS[@]}"
wants dpa && stage dpa "${LIMITS[2]}" $PY -m benchmarks.dpa "${TINY[@]}" --json "$OUTDIR/dpa.json"
wants train && stage train "${LIMITS[3]}" $PY -m benchmarks.train_speed "${TRAIN[@]}" --json "$OUTDIR/train-speed.json"
wants variants && stage variants "${LIMITS[4]}" $PY -m benchmarks.variants "${TINY[@]}" "${VARIANTS[@]}" \
  --json "$OUTDIR/variants.json"
if [ -d /tmp/gpu_run_profiles ]; then
  tar -czf "$OUTDIR/profiles.tar.gz" -C /tmp gpu_run_profiles && ls -l "$OUTDIR/profiles.tar.gz" | tee -a "$LOG"
fi
echo "gpu_run.sh: done in $SECONDS s; $(ls "$OUTDIR" | tr '\n' ' ')" | tee -a "$LOG"
