# shellcheck shell=bash
# Helpers shared by the launch scripts; sourced, never run.
#
# tpu_train.sh is usually started from a laptop, and macOS still ships bash 3.2, so this
# file and the scripts avoid bash 4 features (associative arrays, mapfile, ${x,,}) and
# expand possibly-empty arrays as ${a[@]+"${a[@]}"}: bash < 4.4 treats "${a[@]}" of an
# empty array as unset under `set -u`.

PROG=${PROG:-$(basename "$0")}
DRY_RUN=0
ENV_KV=()   # KEY=VALUE, resolved
ENV_ARGS=() # as given, to hand on to a later run of a script (slurm's batch job)

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

note() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

# One argument as one shell word, readable: bare when it has no special characters,
# otherwise in single quotes (POSIX, so any shell reads it back).
squote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    local escaped_quote="'\\''"
    printf "'%s'" "${1//\'/$escaped_quote}"
  fi
}

# A command line that can be pasted back into a shell.
quote_words() {
  local out="" word
  for word in "$@"; do
    out+="$(squote "$word") "
  done
  printf '%s' "${out% }"
}

# Words to embed in a script that is itself quoted once more (a remote command): printf %q
# escapes with backslashes rather than quotes, so the outer quoting stays readable.
q_words() {
  local out
  printf -v out '%q ' "$@"
  printf '%s' "${out% }"
}

# --dry-run prints a runnable script on stdout: commands bare, everything else a `#`
# comment. A real run echoes each command to stderr first, like `set -x`.
step() {
  if ((DRY_RUN)); then
    printf '# %s\n' "$*"
  else
    note "$*"
  fi
}

run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote_words "$@")"
  else
    printf '+ %s\n' "$(quote_words "$@")" >&2
    "$@"
  fi
}

# usage: need_value FLAG "$@-after-flag"; catches `--tpu --zone z`, where the value was forgotten.
need_value() {
  local flag=$1
  shift
  (($# >= 1)) || die "$flag needs a value"
  [[ $1 != --* ]] || die "$flag needs a value, got the option '$1' (for a value that starts with --, write $flag=VALUE)"
}

# --env KEY=VALUE, or --env KEY to forward this shell's value without writing a secret
# such as WANDB_API_KEY on the command line.
add_env() {
  local kv=$1 key=${1%%=*}
  [[ $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env '$kv': '$key' is not a valid environment variable name"
  if [[ $kv != *=* ]]; then
    [[ -n ${!key+set} ]] || die "--env $key: $key is not set in this shell; give --env $key=VALUE"
    kv="$key=${!key}"
  fi
  ENV_KV+=("$kv")
  ENV_ARGS+=("$1")
}

# `export K=V; ...` for the --env pairs, each value quoted for the shell that reads it.
export_lines() {
  local kv
  for kv in ${ENV_KV[@]+"${ENV_KV[@]}"}; do
    printf 'export %s; ' "$(printf '%q' "$kv")"
  done
}

# The trainer takes `key=value` overrides after CONFIG; anything else there is most
# likely an option placed after CONFIG, which would otherwise reach the trainer.
check_overrides() {
  local override
  for override in "$@"; do
    [[ $override == *=* ]] || die "'$override' after CONFIG is not a key=value override (e.g. train.steps=100); options go before CONFIG"
  done
}

# XLA settings for GPUs, each kept when the user already set it.
# 0.9: JAX would take 75% of GPU memory up front; the rest of 0.9 is better spent on
# activations than left to fragmentation. The latency-hiding scheduler overlaps FSDP
# collectives with compute.
gpu_xla_defaults() {
  local mem_fraction=$1
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${mem_fraction:-${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}}
  if [[ ${XLA_FLAGS:-} != *--xla_gpu_enable_latency_hiding_scheduler* ]]; then
    export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true"
  fi
}

# The run_dir that `alignjax train CONFIG OVERRIDES...` will use: the last run_dir= override,
# else CONFIG's top-level run_dir key, else the trainer's default.
config_run_dir() {
  local config_file=$1 value override
  shift
  value=$(sed -n -E 's/^run_dir:[[:space:]]*([^#]*).*$/\1/p' "$config_file" 2>/dev/null | tail -n 1)
  for override in "$@"; do
    [[ $override != run_dir=* ]] || value=${override#run_dir=}
  done
  value=${value%"${value##*[![:space:]]}"}
  if [[ $value == \"*\" || $value == \'*\' ]]; then
    value=${value:1:${#value}-2}
  fi
  printf '%s' "${value:-runs/default}"
}

# Every host of a multi-host run must see one run_dir (checkpoints are written by all of them
# into it); alignjax train checks that at start and stops when they do not. The launchers
# warn earlier, when run_dir is plainly on each host's own disk.
warn_run_dir_not_shared() {
  local run_dir=$1 hosts=$2 why=$3
  note "warning: run_dir '$run_dir' $why, and the run has $hosts hosts: each would write checkpoints of its own. Set run_dir to a directory every host shares (a shared filesystem such as NFS, Filestore or Lustre, or a bucket mounted on every host with gcsfuse); alignjax train stops at start when the hosts do not share it."
}
