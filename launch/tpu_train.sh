#!/usr/bin/env bash
# Run an alignjax config on every worker of a Cloud TPU VM pod.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu_train.sh --tpu NAME --zone ZONE [options] CONFIG [key=value ...]

Runs `alignjax train CONFIG key=value ...` on every worker of a Cloud TPU VM pod at
once. Every worker must run the same command; the trainer finds its peers itself.

Steps, each gcloud call with --worker=all:
  0. here, before any worker starts: `alignjax compile-check CONFIG key=value ...` for
     the slice (--topology, or CONFIG's mesh.topology), which compiles each stage's step
     for its TPU chips and stops when one does not fit in their memory. Needs alignjax
     with jax[tpu] installed here (pip install -e '.[tpu]'); skipped when the slice is
     unknown, or with --no-compile-check.
  1. pack the code locally (launch/pack_src.sh): the working tree of --src, with
     uncommitted edits, or with --ref exactly that commit. The code travels as a
     tarball rather than a `git clone` on the workers, so the workers need no
     credentials for the repository and run precisely what you have here.
  2. copy it to the workers (tpu-vm scp) and unpack it into REMOTE_DIR/src,
     replacing the previous copy.
  3. install (skipped with --skip-install): a venv in REMOTE_DIR/venv, kept between
     runs, and `pip install -e 'src[tpu]'` into it.
  4. train: each worker's output goes to this terminal and to
     REMOTE_DIR/logs/train-TIMESTAMP-HOSTNAME.log on that worker.

Required:
  --tpu NAME           TPU VM name
  --zone ZONE          its zone, e.g. us-central2-b
Options:
  --project PROJECT    GCP project (default: the one gcloud is configured with)
  --src DIR            checkout to ship (default: the one holding this script)
  --ref REF            ship commit REF of --src instead of its working tree
  --remote-dir DIR     directory on the workers, relative to home (default: alignjax)
  --python PYTHON      Python >= 3.11 on the workers for the venv (default: python3;
                       older TPU VM images need e.g. --python python3.11)
  --skip-install       reuse the venv of an earlier run; the code is still synced
  --topology SLICE     the slice's TPU topology for step 0, e.g. v5e:4x4, v5p:2x2x1
                       (default: CONFIG's mesh.topology)
  --no-compile-check   start the workers without compiling the step for the slice
  --env KEY=VALUE      export on the workers, e.g. XLA_FLAGS=...; repeatable.
                       --env KEY forwards this shell's value (for WANDB_API_KEY)
  --gcloud-flag=FLAG   extra flag for every gcloud call, e.g.
                       --gcloud-flag=--tunnel-through-iap; repeatable
  --dry-run            print the commands as a shell script (comments start with #)
                       and run nothing
  -h, --help           this text

CONFIG is a path inside the shipped code (the workers run from REMOTE_DIR/src), or an
absolute path that exists on every worker. A relative run_dir is resolved in REMOTE_DIR,
beside src (passed as run_dir=../RUN_DIR), since every launch replaces src: relaunching
the same command resumes from the run's checkpoints.

run_dir (CONFIG's, or a run_dir=... override) must be one directory that every worker
sees: all of them write the checkpoints into it and read back what worker 0 wrote. Each
TPU VM worker has its own disk, so on a slice with more than one worker use a Cloud
Storage bucket (run_dir=gs://BUCKET/runs/NAME, read and written directly; the workers'
service account needs access to it), a bucket mounted on every worker (gcsfuse) or a
shared filesystem (Filestore, NFS).
alignjax train checks this at start and stops every worker, naming the ones that do not
see it. Before copying anything, this script asks gcloud how many workers the TPU has and
warns when run_dir is relative (in REMOTE_DIR), in a home directory or in /tmp.

A run stopped with Ctrl-C may leave the trainer running on the workers and holding
the TPU; check with: gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all
--command 'ps -ef | grep "alignjax train"'.
EOF
}

tpu="" zone="" project="" src="" ref="" remote_dir=alignjax python=python3 skip_install=0
topology="" compile_check=1
gcloud_flags=()
while (($#)); do
  # --flag=value is taken apart so each option is handled in one place.
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    --tpu) need_value "$@"; tpu=$2; shift 2 ;;
    --zone) need_value "$@"; zone=$2; shift 2 ;;
    --project) need_value "$@"; project=$2; shift 2 ;;
    --src) need_value "$@"; src=$2; shift 2 ;;
    --ref) need_value "$@"; ref=$2; shift 2 ;;
    --remote-dir) need_value "$@"; remote_dir=$2; shift 2 ;;
    --python) need_value "$@"; python=$2; shift 2 ;;
    --env) need_value "$@"; add_env "$2"; shift 2 ;;
    --gcloud-flag) (($# >= 2)) || die "--gcloud-flag needs a value"; gcloud_flags+=("$2"); shift 2 ;;
    --skip-install) skip_install=1; shift ;;
    --topology) need_value "$@"; topology=$2; shift 2 ;;
    --no-compile-check) compile_check=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) break ;;
  esac
done

[[ -n $tpu ]] || die "missing --tpu NAME (the TPU VM to run on; list them with: gcloud compute tpus tpu-vm list --zone ZONE)"
[[ -n $zone ]] || die "missing --zone ZONE (the zone of TPU VM '$tpu', e.g. us-central2-b)"
(($# >= 1)) || die "missing CONFIG (a YAML file such as configs/quickstart.yaml)"
config=$1
shift
overrides=("$@")
check_overrides ${overrides[@]+"${overrides[@]}"}
[[ -n $remote_dir && $remote_dir != / ]] || die "--remote-dir must name a directory other than /"

src=$(cd "${src:-$HERE/..}" 2>/dev/null && pwd) || die "--src directory does not exist"
if [[ $config != /* ]]; then
  if [[ -n $ref ]]; then
    git -C "$src" cat-file -e "$ref:$config" 2>/dev/null ||
      die "config '$config' is not in commit '$ref' of $src; the workers run that commit"
  else
    [[ -f $src/$config ]] ||
      die "config '$config' not found in $src; the workers run from a copy of it, so CONFIG must be a path inside it"
  fi
fi
if ((!DRY_RUN)); then
  command -v gcloud >/dev/null || die "gcloud not found on PATH; install the Google Cloud CLI (https://cloud.google.com/sdk)"
fi

target=(compute tpus tpu-vm)
where=(--zone "$zone")
[[ -z $project ]] || where+=(--project "$project")
where+=(--worker=all ${gcloud_flags[@]+"${gcloud_flags[@]}"})
# Remote commands go through `bash -c`, so pipefail holds whatever the login shell is.
# They contain no single quotes, which keeps the printed, twice-quoted form readable.
ssh_all() {
  run gcloud "${target[@]}" ssh "$tpu" "${where[@]}" --command "bash -c $(squote "$1")"
}

rd=$(printf '%q' "$remote_dir")
tarball="${TMPDIR:-/tmp}/alignjax-src-$tpu.tar.gz"
remote_tarball=alignjax-src.tar.gz
run_name="train-$(date +%Y%m%d-%H%M%S)"

config_file=$config
[[ $config == /* ]] || config_file=$src/$config

run_dir=$(config_run_dir "$config_file" ${overrides[@]+"${overrides[@]}"})
case $run_dir in
  *://*) on_worker_disk=0 ;;
  /home/* | /root/* | /tmp/* | /var/tmp/* | "~"*) on_worker_disk=1 ;;
  /*) on_worker_disk=0 ;;
  *) on_worker_disk=1 ;; # relative: in REMOTE_DIR on each worker (see step 4)
esac
if ((on_worker_disk)); then
  if ((DRY_RUN)); then
    note "warning: run_dir '$run_dir' is on each worker's own disk; if $tpu has more than one worker, set run_dir to a directory they all share (see --help)"
  else
    describe_where=(--zone "$zone")
    [[ -z $project ]] || describe_where+=(--project "$project")
    workers=$(gcloud "${target[@]}" describe "$tpu" "${describe_where[@]}" --format='json(networkEndpoints)' 2>/dev/null |
      grep -o '"ipAddress"' | wc -l | tr -d ' ') || workers=0
    if ((workers > 1)); then
      warn_run_dir_not_shared "$run_dir" "$workers" "is on each worker's own disk"
    fi
  fi
fi
# The slice is known from --topology, a mesh.topology override, or CONFIG's mesh section.
if ((compile_check)) && {
  [[ -n $topology ]] ||
    printf '%s\n' ${overrides[@]+"${overrides[@]}"} | grep -q '^mesh\.topology=.' ||
    grep -Eq '^[[:space:]]+topology:[[:space:]]*[^[:space:]#]' "$config_file" 2>/dev/null
}; then
  ((DRY_RUN)) || command -v alignjax >/dev/null ||
    die "step 0 needs alignjax here (pip install -e '.[tpu]' in --src); or pass --no-compile-check"
  step "0/4 compile-check $config for the slice, here (skip with --no-compile-check)"
  run alignjax compile-check "$config_file" ${topology:+--topology "$topology"} ${overrides[@]+"${overrides[@]}"} ||
    die "the step does not fit the slice (see above): change the config, or pass --no-compile-check"
fi

step "1/4 pack ${ref:-the working tree} of $src"
run "$HERE/pack_src.sh" "$src" "$tarball" ${ref:+"$ref"}

step "2/4 copy the code to every worker of $tpu and unpack it into ~/$remote_dir/src"
run gcloud "${target[@]}" scp "$tarball" "$tpu:$remote_tarball" "${where[@]}"
ssh_all "set -eu; mkdir -p $rd; rm -rf $rd/src; mkdir $rd/src; tar -xzf $remote_tarball -C $rd/src; rm -f $remote_tarball"

if ((skip_install)); then
  step "3/4 install: skipped (--skip-install)"
else
  step "3/4 install alignjax[tpu] into ~/$remote_dir/venv on every worker"
  py=$(printf '%q' "$python")
  ssh_all "set -eu; cd $rd; $py -c \"import sys; sys.exit(sys.version_info < (3, 11))\" || { echo \"\$(hostname): alignjax needs Python >= 3.11 and $python is missing or older; pass --python python3.11 (sudo apt-get install -y python3.11 python3.11-venv)\" >&2; exit 1; }; [ -d venv ] || $py -m venv venv || { echo \"\$(hostname): could not create a venv; sudo apt-get install -y python3-venv (or python3.11-venv)\" >&2; exit 1; }; venv/bin/pip install --quiet --upgrade pip; venv/bin/pip install --quiet -e \"src[tpu]\""
fi

# Every launch replaces REMOTE_DIR/src, so a relative run_dir (the configs' runs/NAME)
# resolved inside it would lose its checkpoints at the next launch instead of resuming
# from them: it is resolved beside src, in REMOTE_DIR.
case $run_dir in
  *://* | /* | "~"*) ;;
  *)
    kept=()
    for override in ${overrides[@]+"${overrides[@]}"}; do
      [[ $override == run_dir=* ]] || kept+=("$override")
    done
    overrides=(${kept[@]+"${kept[@]}"} "run_dir=../$run_dir")
    note "run_dir '$run_dir' is relative: on the workers it is ~/$remote_dir/$run_dir, beside src (which every launch replaces), so a relaunch resumes from its checkpoints"
    ;;
esac

step "4/4 train on every worker; logs also in ~/$remote_dir/logs/$run_name-HOSTNAME.log"
train_cmd=$(q_words alignjax train "$config" ${overrides[@]+"${overrides[@]}"})
ssh_all "set -euo pipefail; cd $rd/src; [ -f ../venv/bin/activate ] || { echo \"\$(hostname): no venv in ~/$remote_dir/venv; run once without --skip-install\" >&2; exit 1; }; . ../venv/bin/activate; $(export_lines)mkdir -p ../logs; log=../logs/$run_name-\$(hostname).log; $train_cmd 2>&1 | tee \"\$log\""
