#!/usr/bin/env bash
# One GPU's numbers for alignjax as one table: GPU-only tests, training throughput, TRL.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/device_check.sh [--dry-run] [--out DIR] [--python PYTHON]

Run from a checkout on a machine with one NVIDIA GPU, in about 8 minutes at most:
installs the wheels in .whl (launch/device_wheels.sh downloads them where the package
registries can be reached) unless their packages already import, then runs, each
step with its own time limit, and prints one table of:
  the GPU-only tests (cuDNN and dot_product attention against XLA, a bf16 DPO step);
  alignjax bench train: DPO on a Llama-3.2-1B-shaped model and on Llama-3-8B with
    LoRA rank 16 (random init, bf16, 2048-token sequences packed, cuDNN attention):
    tokens/s, step time, MFU, peak GPU memory;
  alignjax bench trl: TRL's DPOTrainer on the 1B model against alignjax.
Exits 1 when a row failed. Logs, reports and the table go to DIR.

Options:
  --dry-run          every step at toy size on the CPU (also: DEVICE_CHECK_DRY_RUN=1)
  --out DIR          logs and reports (default: runs/device_check in the checkout)
  --python PYTHON    the interpreter with JAX and PyTorch (default: python3)
  -h, --help         this text
EOF
}

dry_run=${DEVICE_CHECK_DRY_RUN:-0} out="" python=python3
while (($#)); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --out) need_value "$@"; out=$2; shift 2 ;;
    --python) need_value "$@"; python=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
cd "$HERE/.."

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || note "nvidia-smi failed"
fi

# What the wheels bring (launch/device_wheels.sh); imported, not just present on disk.
if "$python" -c "import grain, array_record, datasets, trl, tensorboardX" 2>/dev/null; then
  note "the packages of .whl already import: no install"
elif compgen -G ".whl/*.whl" >/dev/null; then
  site="${TMPDIR:-/tmp}/alignjax-device-site"
  step "install the wheels of .whl into $site"
  timeout 60 "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || die "installing the wheels of .whl failed"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
else
  note "no wheels in .whl and grain, datasets or trl does not import: run launch/device_wheels.sh where pip reaches an index"
fi

args=()
((dry_run)) && args+=(--dry-run)
[[ -z $out ]] || args+=(--out "$out")
exec "$python" launch/device_check.py ${args[@]+"${args[@]}"}
