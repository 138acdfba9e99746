#!/usr/bin/env bash
# Run an alignjax config on a Slurm GPU cluster: submit a batch job, or start the
# processes when already inside an allocation.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/lib.sh"

usage() {
  cat <<'EOF'
Usage:
  launch/slurm_train.sh --nodes N --gpus-per-node G [options] CONFIG [key=value ...]
      outside an allocation: submits a batch job (sbatch) that runs this script again
  launch/slurm_train.sh [options] CONFIG [key=value ...]
      inside an allocation (SLURM_JOB_ID is set: the batch job, or a salloc shell):
      starts the training processes with srun

One process per node, each driving all of its node's GPUs: JAX runs one process per
host best (one data loader and one checkpoint writer per host, and collectives
inside a node stay within one process). srun starts them with
  ALIGNJAX_COORDINATOR    first host of the allocation (scontrol show hostnames):PORT
  ALIGNJAX_NUM_PROCESSES  number of nodes
  ALIGNJAX_PROCESS_ID     $SLURM_PROCID of the task
and the GPU XLA settings of launch/gpu_train.sh. Output lines carry the task number
(srun --label). The job inherits this shell's environment, so activate the Python
environment with alignjax installed before submitting.

run_dir (CONFIG's, or a run_dir=... override) must be one directory that every node
sees: all processes write the checkpoints into it and read back what process 0 wrote.
With more than one node, put it on a shared filesystem (NFS, Lustre, GPFS), in a Cloud
Storage bucket (run_dir=gs://BUCKET/runs/NAME) or a bucket mounted on every node, not on
a node's local disk (/tmp, local scratch). alignjax train
checks this at start and stops every process, naming the ones that do not see it; this
script warns earlier when run_dir is in /tmp or on a local filesystem type here (ext4,
xfs, btrfs, tmpfs, overlay).

Submission options:
  --nodes N            nodes to allocate
  --gpus-per-node G    GPUs per node
  --partition P        partition (default: the cluster's)
  --time T             time limit, e.g. 04:00:00 (default: the partition's)
  --job-name NAME      default: alignjax
  --log-dir DIR        job output goes to DIR/slurm-JOBID.out (default: logs)
  --sbatch-arg=ARG     extra sbatch option, e.g. --sbatch-arg=--account=myteam;
                       repeatable
Options for both:
  --port PORT          coordinator port (default: 10000 + SLURM_JOB_ID % 20000, so
                       jobs sharing a first node do not collide)
  --env KEY=VALUE      export for the trainer; repeatable. --env KEY forwards this
                       shell's value (the job inherits it, so it is not written
                       into the batch script)
  --dry-run            print what would run and run nothing: outside an allocation
                       the batch script; inside, the exports and the srun command
                       (this still asks scontrol for the host names)
  -h, --help           this text
EOF
}

nodes="" gpus_per_node="" partition="" time_limit="" job_name=alignjax log_dir=logs port=""
sbatch_args=()
while (($#)); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    --nodes) need_value "$@"; nodes=$2; shift 2 ;;
    --gpus-per-node) need_value "$@"; gpus_per_node=$2; shift 2 ;;
    --partition) need_value "$@"; partition=$2; shift 2 ;;
    --time) need_value "$@"; time_limit=$2; shift 2 ;;
    --job-name) need_value "$@"; job_name=$2; shift 2 ;;
    --log-dir) need_value "$@"; log_dir=$2; shift 2 ;;
    --sbatch-arg) (($# >= 2)) || die "--sbatch-arg needs a value"; sbatch_args+=("$2"); shift 2 ;;
    --port) need_value "$@"; port=$2; shift 2 ;;
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
overrides=("$@")
check_overrides ${overrides[@]+"${overrides[@]}"}
[[ -z $port || $port =~ ^[0-9]+$ ]] || die "--port '$port' is not a port number"

# Whether DIR is plainly on this host's own disk: /tmp, or a local filesystem type (its
# nearest existing parent, relative paths from here, where the job runs); prints the reason.
on_local_disk() {
  local dir=$1 probe fs
  case $dir in
    *://*) return 1 ;;
    /tmp | /tmp/* | /var/tmp/* | /dev/shm/*) printf 'is in a temporary directory'; return 0 ;;
  esac
  probe=$dir
  [[ $probe == /* ]] || probe=$PWD/$probe
  while [[ ! -e $probe ]]; do probe=$(dirname "$probe"); done
  fs=$(stat -f -c %T "$probe" 2>/dev/null) || return 1
  case $fs in
    ext2/ext3 | ext4 | xfs | btrfs | tmpfs | overlayfs | overlay | f2fs | ramfs)
      printf 'is on a local %s filesystem here' "$fs"
      return 0
      ;;
  esac
  return 1
}

warn_if_not_shared() {
  local hosts=$1 run_dir why
  ((hosts > 1)) || return 0
  run_dir=$(config_run_dir "$config" ${overrides[@]+"${overrides[@]}"})
  if why=$(on_local_disk "$run_dir"); then
    warn_run_dir_not_shared "$run_dir" "$hosts" "$why"
  fi
}

submit() {
  [[ -n $nodes ]] || die "missing --nodes N (how many nodes to allocate; or run this inside an allocation)"
  [[ -n $gpus_per_node ]] || die "missing --gpus-per-node G (GPUs to allocate on each node)"
  [[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes '$nodes' is not a positive integer"
  [[ $gpus_per_node =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node '$gpus_per_node' is not a positive integer"
  [[ -f $config || $config == /* ]] || die "config '$config' not found (paths are relative to $(pwd), where the job will run)"
  warn_if_not_shared "$nodes"

  local inner=("$HERE/slurm_train.sh")
  [[ -z $port ]] || inner+=(--port "$port")
  local arg
  for arg in ${ENV_ARGS[@]+"${ENV_ARGS[@]}"}; do inner+=(--env "$arg"); done
  inner+=("$config" ${overrides[@]+"${overrides[@]}"})

  local script
  script="#!/bin/bash
#SBATCH --job-name=$job_name
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$gpus_per_node
${partition:+#SBATCH --partition=$partition
}${time_limit:+#SBATCH --time=$time_limit
}#SBATCH --chdir=$(pwd)
#SBATCH --output=$log_dir/slurm-%j.out
"
  for arg in ${sbatch_args[@]+"${sbatch_args[@]}"}; do script+="#SBATCH $arg
"; done
  script+="# Written by launch/slurm_train.sh: inside the allocation it starts one process per node.
exec $(quote_words "${inner[@]}")
"
  if ((DRY_RUN)); then
    printf '%s' "$script"
    return
  fi
  command -v sbatch >/dev/null || die "sbatch not found on PATH; run this on a Slurm login node"
  command -v alignjax >/dev/null ||
    note "warning: alignjax is not on PATH here; the job inherits this environment, so activate the one it is installed in"
  # Slurm silently drops the job's output when the --output directory does not exist.
  mkdir -p "$log_dir"
  local job_id
  job_id=$(printf '%s' "$script" | sbatch --parsable) || die "sbatch refused the job (its message is above)"
  job_id=${job_id%%;*}
  note "submitted job $job_id; follow it with: tail -f $log_dir/slurm-$job_id.out"
}

start_processes() {
  [[ -n ${SLURM_JOB_NODELIST:-} ]] || die "SLURM_JOB_ID is set but SLURM_JOB_NODELIST is not; run inside a job started by sbatch or salloc"
  [[ -f $config || $config == /* ]] || die "config '$config' not found (paths are relative to $(pwd))"
  command -v scontrol >/dev/null || die "scontrol not found on PATH, so the coordinator host cannot be found"
  local hosts coordinator_host num_processes
  hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST") || die "scontrol could not expand node list '$SLURM_JOB_NODELIST'"
  coordinator_host=${hosts%%$'\n'*}
  num_processes=${SLURM_JOB_NUM_NODES:-$(printf '%s\n' "$hosts" | wc -l | tr -d ' ')}
  port=${port:-$((10000 + SLURM_JOB_ID % 20000))}
  warn_if_not_shared "$num_processes"
  if ((!DRY_RUN)); then
    command -v srun >/dev/null || die "srun not found on PATH"
    command -v alignjax >/dev/null ||
      die "alignjax is not on PATH; activate the environment it is installed in before submitting (the job inherits it)"
  fi

  gpu_xla_defaults ""
  local kv
  for kv in ALIGNJAX_COORDINATOR="$coordinator_host:$port" ALIGNJAX_NUM_PROCESSES="$num_processes" \
    XLA_PYTHON_CLIENT_MEM_FRACTION="$XLA_PYTHON_CLIENT_MEM_FRACTION" XLA_FLAGS="$XLA_FLAGS" \
    ${ENV_KV[@]+"${ENV_KV[@]}"}; do
    if ((DRY_RUN)); then
      printf 'export %s\n' "$(squote "$kv")"
    else
      export "${kv?}" # kv is KEY=VALUE
    fi
  done
  step "$num_processes processes, one per node, coordinator $coordinator_host:$port"
  # The process id differs per task, so it is read inside each task rather than here.
  # shellcheck disable=SC2016
  run srun --nodes="$num_processes" --ntasks="$num_processes" --ntasks-per-node=1 --kill-on-bad-exit=1 --label \
    bash -c 'export ALIGNJAX_PROCESS_ID=$SLURM_PROCID; exec "$@"' alignjax-task \
    alignjax train "$config" ${overrides[@]+"${overrides[@]}"}
}

if [[ -n ${SLURM_JOB_ID:-} ]]; then
  start_processes
else
  submit
fi
