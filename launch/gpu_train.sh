#!/usr/bin/env bash
# Run an alignjax config on this machine's GPUs, as one process.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/gpu_train.sh [options] CONFIG [key=value ...]

Runs `alignjax train CONFIG key=value ...` in one process that drives every GPU
it can see (limit them with --env CUDA_VISIBLE_DEVICES=0,1). For several machines
use launch/slurm_train.sh.

Before training it lists the GPUs with nvidia-smi (when nvidia-smi is installed;
a driver that does not answer stops the launch) and sets, unless already set in
the environment:
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.9   JAX's share of GPU memory (its default is 0.75)
  XLA_FLAGS+=--xla_gpu_enable_latency_hiding_scheduler=true
                                        overlap FSDP collectives with compute

Options:
  --install            first pip install -e '<this checkout>[cuda]' into PYTHON
  --python PYTHON      interpreter for --install (default: python3)
  --mem-fraction F     XLA_PYTHON_CLIENT_MEM_FRACTION, overriding the environment
  --env KEY=VALUE      export for the trainer; repeatable. --env KEY forwards this
                       shell's value
  --dry-run            print the commands as a shell script (comments start with #)
                       and run nothing
  -h, --help           this text
EOF
}

install=0 python=python3 mem_fraction=""
while (($#)); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    --install) install=1; shift ;;
    --python) need_value "$@"; python=$2; shift 2 ;;
    --mem-fraction) need_value "$@"; mem_fraction=$2; shift 2 ;;
    --env) need_value "$@"; add_env "$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) break ;;
  esac
done
(($# >= 1)) || die "missing CONFIG (a YAML file such as configs/quickstart.yaml)"
config=$1
shift
check_overrides "$@"
if [[ -n $mem_fraction ]]; then
  [[ $mem_fraction =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "--mem-fraction '$mem_fraction' is not a number in (0, 1]"
fi
[[ -f $config || $config == *://* ]] || die "config '$config' not found (paths are relative to $(pwd))"

if command -v nvidia-smi >/dev/null; then
  step "GPUs on $(hostname)"
  run nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader ||
    die "nvidia-smi failed, so the NVIDIA driver is not usable here; JAX would fall back to the CPU"
else
  note "nvidia-smi not found; if this machine has NVIDIA GPUs, JAX will only see them when the driver is installed"
fi

gpu_xla_defaults "$mem_fraction"
for kv in XLA_PYTHON_CLIENT_MEM_FRACTION="$XLA_PYTHON_CLIENT_MEM_FRACTION" XLA_FLAGS="$XLA_FLAGS" ${ENV_KV[@]+"${ENV_KV[@]}"}; do
  if ((DRY_RUN)); then
    printf 'export %s\n' "$(squote "$kv")"
  else
    export "${kv?}" # kv is KEY=VALUE
  fi
done

if ((install)); then
  step "install alignjax[cuda] from $(cd "$HERE/.." && pwd)"
  run "$python" -m pip install -e "$(cd "$HERE/.." && pwd)[cuda]"
fi

if ((!DRY_RUN)); then
  command -v alignjax >/dev/null ||
    die "alignjax is not on PATH; activate the environment it is installed in, or pass --install"
fi
step "train"
run alignjax train "$config" "$@"
