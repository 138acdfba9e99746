#!/usr/bin/env bash
# Download the wheels a GPU image without package registries lacks, for launch/device_check.sh.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/device_wheels.sh [--dest DIR] [--python PYTHON] [--dry-run]

Downloads, on a machine that reaches the package registries, the wheels that
launch/device_check.sh installs on a GPU machine that reaches none (pip install
--no-index). That machine's image already holds Python 3.12, JAX for CUDA 13,
Flax, Optax, Orbax, PyTorch, transformers, PEFT, accelerate, pyarrow, pandas and
the rest of their dependencies; the wheels are what alignjax's runtime and its
benchmarks import beyond those, at the versions its tests run with:

  grain, array-record, portpicker   the data pipeline (portpicker: grain's workers)
  datasets, dill, multiprocess      Hugging Face datasets (and TRL's input)
  tensorboardX                      training logs
  trl                               alignjax bench trl

Each is fetched with --no-deps for CPython 3.12 on manylinux x86-64, one version
of each, so the folder installs without an index. The folder (default .whl, which
.gitignore ignores) travels with the checkout to the GPU machine and must stay under
64 MiB: the script fails when the total is over.

Options:
  --dest DIR         where the wheels go (default: .whl in the checkout)
  --python PYTHON    interpreter whose pip downloads (default: python3)
  --dry-run          print the commands and download nothing
  -h, --help         this text
EOF
}

# name==version; the versions the test suite runs with here.
WHEELS=(
  grain==0.2.18
  array-record==0.8.6
  portpicker==1.6.0
  datasets==5.2.0
  dill==0.4.1
  multiprocess==0.70.19
  tensorboardX==2.6.5
  trl==1.16.0
)
LIMIT_BYTES=$((64 * 1024 * 1024))

dest="$HERE/../.whl" python=python3
while (($#)); do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dest) need_value "$@"; dest=$2; shift 2 ;;
    --python) need_value "$@"; python=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# pip matches a manylinux tag exactly, so each glibc baseline a wheel may name is listed.
platforms=()
for tag in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
  manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  platforms+=(--platform "$tag")
done

step "wheels for CPython 3.12, manylinux x86-64, into $dest"
run mkdir -p "$dest"
run "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" --dest "$dest" "${WHEELS[@]}"
((DRY_RUN)) && exit 0

# One version of each: a second wheel of a name (an older download) stops the install there.
names=$(for wheel in "$dest"/*.whl; do basename "$wheel" | cut -d- -f1 | tr '[:upper:]-' '[:lower:]_'; done)
duplicates=$(sort <<<"$names" | uniq -d)
[[ -z $duplicates ]] || die "$dest holds two versions of: $duplicates; delete the stale wheels and rerun"

total=$(cat "$dest"/*.whl | wc -c)
printf '%s: %d wheels, %d bytes (%.1f MiB) in %s\n' "$PROG" "$(ls "$dest"/*.whl | wc -l)" "$total" \
  "$(awk -v b="$total" 'BEGIN { print b / 1048576 }')" "$dest"
((total <= LIMIT_BYTES)) || die "the wheels take $total bytes, over the 64 MiB limit"
