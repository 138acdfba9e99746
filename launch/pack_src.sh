#!/usr/bin/env bash
# Pack a checkout into a .tar.gz for shipping to remote workers.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/pack_src.sh SRC_DIR OUT.tar.gz [REF]

Packs SRC_DIR into OUT.tar.gz: without REF, the working tree as git sees it (tracked
files plus untracked files that git does not ignore, so uncommitted edits are included
and run directories, venvs and caches listed in .gitignore are not); with REF, exactly
that commit (git archive). SRC_DIR need not be a git checkout when no REF is given:
then everything but .git is packed.
EOF
}

case ${1:-} in -h | --help) usage; exit 0 ;; esac
(($# == 2 || $# == 3)) || { usage >&2; exit 2; }
src=$1 out=$2 ref=${3:-}
[[ -d $src ]] || die "source directory '$src' does not exist"
# Keep macOS tar from adding ._* resource-fork files that Linux workers would import.
export COPYFILE_DISABLE=1

if [[ -n $ref ]]; then
  git -C "$src" rev-parse --verify --quiet "$ref^{commit}" >/dev/null ||
    die "'$ref' is not a commit in $src (fetch it, or check the spelling)"
  git -C "$src" archive --format=tar.gz -o "$out" "$ref"
elif git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # ls-files still lists tracked files deleted in the working tree; tar would fail on them.
  git -C "$src" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' path; do
      if [[ -e $src/$path || -L $src/$path ]]; then printf '%s\0' "$path"; fi
    done |
    tar -czf "$out" -C "$src" --null -T -
else
  tar -czf "$out" -C "$src" --exclude=.git .
fi
