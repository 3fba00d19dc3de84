#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 nvcc from PyPI (cuda-requirements.txt) into <repo>/.venv-nvcc,
# where build.rs finds it with no environment set. Idempotent: when the venv already holds the
# pinned set and its nvcc answers `--version` with release 13.0, nothing is downloaded.
#
# Usage: bash scripts/install-nvcc.sh        (PYTHON=/path/to/python3 picks the interpreter)
# The nvcc path is the only thing printed on stdout, so NVCC="$(bash scripts/install-nvcc.sh)" works;
# progress and pip's output go to stderr.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv-nvcc"
requirements="$repo/cuda-requirements.txt"
host_python="${PYTHON:-python3}"

log() { printf 'install-nvcc: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# The nvcc inside the venv (pip's CUDA 13 wheels put it under nvidia/cu13/bin), or nothing.
venv_nvcc() {
  local found
  for found in "$venv"/lib/python*/site-packages/nvidia/cu13/bin/nvcc; do
    if [[ -x $found ]]; then
      printf '%s\n' "$found"
      return 0
    fi
  done
  return 1
}

# "release 13.0, V13.0.88" from `nvcc --version`, or nothing if it does not run.
nvcc_release() {
  local text
  text="$("$1" --version 2>/dev/null)" || return 1
  grep -o 'release [0-9][0-9.]*, V[0-9.]*' <<<"$text"
}

# True when every `name==version` line of cuda-requirements.txt is installed at exactly that
# version. nvcc's own version says nothing about nvvm, which decides the PTX ISA.
pins_installed() {
  [[ -x $venv/bin/python ]] || return 1
  "$venv/bin/python" - "$requirements" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

wrong = []
with open(sys.argv[1]) as f:
    for line in f:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, want = line.split("==")
        try:
            have = version(name)
        except PackageNotFoundError:
            have = "missing"
        if have != want:
            wrong.append(f"{name} {have} (want {want})")
if wrong:
    print("install-nvcc: not as pinned: " + ", ".join(wrong), file=sys.stderr)
    sys.exit(1)
PY
}

[[ -f $requirements ]] || die "missing $requirements"

nvcc="$(venv_nvcc || true)"
if [[ -n $nvcc ]] && [[ "$(nvcc_release "$nvcc" || true)" == "release 13.0,"* ]] && pins_installed; then
  log "pinned nvcc already installed"
else
  # A venv whose interpreter no longer runs (Python upgraded or moved) is rebuilt from scratch.
  if ! "$venv/bin/python" -c '' 2>/dev/null; then
    command -v "$host_python" >/dev/null || die "$host_python not found (set PYTHON=/path/to/python3)"
    log "creating $venv with $("$host_python" --version 2>&1)"
    rm -rf "$venv"
    if ! "$host_python" -m venv "$venv" >&2; then
      # Debian without python3-venv has no ensurepip: make a bare venv and drive it with the
      # host's pip below.
      log "$host_python -m venv failed; retrying without pip"
      rm -rf "$venv"
      "$host_python" -m venv --without-pip "$venv" >&2 ||
        die "cannot create a venv (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
  fi

  if "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    pip=("$venv/bin/python" -m pip)
  elif "$host_python" -m pip --version >/dev/null 2>&1; then
    pip=("$host_python" -m pip --python "$venv/bin/python")
  else
    die "no pip in $venv nor in $host_python (on Debian/Ubuntu: apt-get install python3-venv python3-pip)"
  fi

  log "installing $(grep -v '^#' "$requirements" | xargs)"
  "${pip[@]}" install --disable-pip-version-check --no-input -r "$requirements" >&2

  nvcc="$(venv_nvcc)" || die "pip finished but no nvcc under $venv/lib/python*/site-packages/nvidia/cu13/bin"
  pins_installed || die "the venv does not hold the pinned versions after pip install"
fi

release="$(nvcc_release "$nvcc")" || die "$nvcc does not run --version"
[[ $release == "release 13.0,"* ]] || die "$nvcc is $release, expected release 13.0"
log "nvcc: $nvcc ($release)"
printf '%s\n' "$nvcc"
