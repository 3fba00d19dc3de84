#!/usr/bin/env bash
# Packs what the GPU machines run into gpu-pack/ (gitignored): the release test binaries, the bench
# binaries and the `detkd` CLI, all built with `--features cuda` (PTX embedded, so nothing else is
# needed there), stripped, plus gpu-pack/run.sh; then compresses it to gpu-pack.tar.xz. The GPU
# machines have the NVIDIA driver and Python/PyTorch but no Rust and no network, and take at most
# 64 MiB, which is checked here. Every binary embeds the same library and PTX, so the directory is
# several hundred MiB but the archive (xz with a 64 MiB window sees the repeats) is a fraction of it.
#
# Usage: bash scripts/pack-gpu.sh
# There:  tar xJf gpu-pack.tar.xz   (or: python3 -m tarfile -e gpu-pack.tar.xz)
#         bash gpu-pack/run.sh [--no-bench] [--sanitizer TOOL] [--timeout SECS] [-- TEST_ARGS...]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pack="$repo/gpu-pack"
max_bytes=$((64 * 1024 * 1024))

log() { printf 'pack-gpu: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

command -v python3 >/dev/null || die "python3 is needed to read cargo's JSON messages"
command -v xz >/dev/null || die "xz is needed to compress the pack (Debian: apt-get install xz-utils)"
cd "$repo"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Prints `<kind>\t<name>\t<executable>` for each executable artifact in cargo's JSON messages
# ($1) whose profile.test matches $2 (true/false). Names come from the target, so cargo's hash
# suffix (roi_align-1a2b3c) never reaches the pack.
executables() {
  python3 - "$1" "$2" <<'PY'
import json
import sys

path, want_test = sys.argv[1], sys.argv[2] == "true"
with open(path) as f:
    for line in f:
        if not line.startswith("{"):
            continue
        msg = json.loads(line)
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if msg["profile"]["test"] != want_test:
            continue
        print(msg["target"]["kind"][0], msg["target"]["name"], msg["executable"], sep="\t")
PY
}

# Copies $1 to $2 without symbols (size: the pack must stay under 64 MiB).
copy_stripped() {
  if command -v strip >/dev/null; then
    strip --strip-all -o "$2" "$1"
  else
    cp "$1" "$2"
  fi
  chmod 755 "$2"
}

# Fails on two artifacts packed under one name (a clash would silently drop a binary).
copy_unique() {
  [[ ! -e $2 ]] || die "two artifacts would both be packed as ${2#"$pack"/}"
  copy_stripped "$1" "$2"
}

command -v strip >/dev/null || log "warning: strip not found; packing binaries with their symbols"

# build.rs logs the nvcc it used as `cargo::warning=using <path> (release ...)`; cargo keeps that
# output per build directory, so read the newest release one.
nvcc_used() {
  local newest
  newest="$(find target/release/build -path '*/detkd-*/output' -printf '%T@ %p\n' 2>/dev/null |
    sort -rn | head -n 1 | cut -d' ' -f2-)"
  if [[ -n $newest ]] && grep -q 'warning=using ' "$newest"; then
    sed -n 's/^cargo::\{0,1\}warning=using //p' "$newest" | head -n 1
  else
    echo unknown
  fi
}

log "building release test binaries (cargo test --release --features cuda --no-run)"
cargo test --release --features cuda --no-run --message-format=json-render-diagnostics >"$work/tests.json"
log "building bench binaries (cargo bench --features cuda --no-run)"
cargo bench --features cuda --no-run --message-format=json-render-diagnostics >"$work/benches.json"
log "building the CLI (cargo build --release --features cuda --bins)"
cargo build --release --features cuda --bins --message-format=json-render-diagnostics >"$work/bins.json"

rm -rf "$pack"
mkdir -p "$pack/bin/tests" "$pack/bin/benches"

# Test harnesses: integration tests keep their name; unit tests of the lib and of each bin get
# the kind as a prefix (`lib-detkd`, `bin-detkd`), since they share the package name.
while IFS=$'\t' read -r kind name exe; do
  case $kind in
    test) dest="$name" ;;
    *) dest="$kind-$name" ;;
  esac
  copy_unique "$exe" "$pack/bin/tests/$dest"
done < <(executables "$work/tests.json" true)

# `cargo bench` also builds libtest bench harnesses for the lib and bins; those reject criterion's
# flags and hold no benchmarks, so only `benches/*.rs` targets are packed.
while IFS=$'\t' read -r kind name exe; do
  if [[ $kind == bench ]]; then
    copy_unique "$exe" "$pack/bin/benches/$name"
  fi
done < <(executables "$work/benches.json" true)

while IFS=$'\t' read -r kind name exe; do
  if [[ $kind == bin ]]; then
    copy_unique "$exe" "$pack/bin/$name"
  fi
done < <(executables "$work/bins.json" false)

compgen -G "$pack/bin/tests/*" >/dev/null || die "cargo reported no test binaries"

# The PyTorch/torchvision peers of the benches, run after them on the same machine.
mkdir -p "$pack/peer"
cp bench/peer/bench_peer.py "$pack/peer/"

# What built the pack, for bench/RESULTS.md and for telling two packs apart.
{
  echo "commit:  $(git rev-parse HEAD 2>/dev/null || echo 'none yet')$([[ -n "$(git status --porcelain 2>/dev/null)" ]] && echo ' (dirty)')"
  echo "built:   $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
  echo "rustc:   $(rustc --version)"
  echo "nvcc:    $(nvcc_used)"
  echo "files:"
  (cd "$pack" && find bin -type f -printf '  %p %s bytes\n' | sort)
} >"$pack/BUILD_INFO"

cat >"$pack/run.sh" <<'RUN_SH'
#!/usr/bin/env bash
# Runs the detkd binaries packed by scripts/pack-gpu.sh on a GPU machine (NVIDIA driver,
# Python/PyTorch, no Rust): every test binary, then every bench binary and the PyTorch peers
# (peer/bench_peer.py, same shapes, same run); prints a summary and exits non-zero on a failure.
#
# Usage: bash run.sh [--no-bench] [--sanitizer TOOL] [--timeout SECS] [-- TEST_ARGS...]
#   --no-bench        test binaries only (no criterion benches, no PyTorch peer comparison)
#   --sanitizer TOOL  run the test binaries under `compute-sanitizer --tool TOOL --error-exitcode 1`
#                     (memcheck, racecheck, initcheck, synccheck); benches are skipped then
#   --timeout SECS    stop any one binary after SECS seconds (counts as failed)
#   -- TEST_ARGS      passed to every test binary, e.g. `-- roi_align --nocapture`
# Logs go to $OUT/<name>.log (benches: bench-<name>.log) when $OUT is set, else to logs/ here.
set -uo pipefail # no -e: one failing binary must not stop the others

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
run_bench=1
sanitizer=""
timeout_s=""
test_args=()

usage() { sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
while (($# > 0)); do
  case $1 in
    --no-bench) run_bench=0 ;;
    --sanitizer)
      (($# >= 2)) || { usage >&2; exit 2; }
      sanitizer=$2
      shift
      ;;
    --sanitizer=*) sanitizer=${1#*=} ;;
    --timeout)
      (($# >= 2)) || { usage >&2; exit 2; }
      timeout_s=$2
      shift
      ;;
    --timeout=*) timeout_s=${1#*=} ;;
    -h | --help) usage; exit 0 ;;
    --) shift; test_args=("$@"); break ;;
    *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

logs="${OUT:-$here/logs}"
mkdir -p "$logs"

prepend_lib_dir() {
  case ":${LD_LIBRARY_PATH:-}:" in
    *":$1:"*) ;;
    *) export LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
  esac
}

# Path of the first library named $1* the dynamic loader already knows, or nothing.
ldconfig_lookup() {
  local ldconfig
  ldconfig="$(command -v ldconfig || echo /sbin/ldconfig)"
  "$ldconfig" -p 2>/dev/null | awk -v lib="$1" 'index($1, lib) == 1 { print $NF; exit }'
}

# cudarc loads libcuda with dlopen: make sure the loader can find it.
find_libcuda() {
  local found dir
  found="$(ldconfig_lookup libcuda.so)"
  if [[ -n $found ]]; then
    echo "libcuda:   $found (ldconfig)"
    return 0
  fi
  for dir in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/wsl/lib; do
    if compgen -G "$dir/libcuda.so*" >/dev/null; then
      prepend_lib_dir "$dir"
      echo "libcuda:   $dir (added to LD_LIBRARY_PATH)"
      return 0
    fi
  done
  echo "libcuda:   NOT FOUND (GPU tests will fail: DETKD_REQUIRE_GPU=1)"
}

find_compute_sanitizer() {
  local candidate
  for candidate in "$(command -v compute-sanitizer)" /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer; do
    if [[ -n $candidate && -x $candidate ]]; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

echo "==================== detkd GPU run ===================="
[[ -f $here/BUILD_INFO ]] && sed -n '1,4p' "$here/BUILD_INFO"
echo "host:      $(hostname), $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
if command -v nvidia-smi >/dev/null; then
  echo "gpu:       $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | paste -sd ';' -)"
else
  echo "gpu:       nvidia-smi not found"
fi
find_libcuda
echo "logs:      $logs"

# A missing driver or device must fail the GPU tests, not skip them.
export DETKD_REQUIRE_GPU=1
export CRITERION_HOME="$logs/criterion"

wrapper=()
if [[ -n $timeout_s ]]; then
  wrapper+=(timeout --kill-after=10 "$timeout_s")
fi
if [[ -n $sanitizer ]]; then
  sanitizer_bin="$(find_compute_sanitizer)" || {
    echo "run.sh: compute-sanitizer not found (PATH, /usr/local/cuda*/bin)" >&2
    exit 2
  }
  echo "sanitizer: $sanitizer_bin --tool $sanitizer"
  run_bench=0
fi

rows=()
failures=0

# Adds a summary row for binary $1 (kind $2) from its log $3 and exit status $4.
record() {
  local name=$1 kind=$2 log=$3 status=$4 passed failed ignored state
  # libtest ends with `test result: ok. 12 passed; 0 failed; 1 ignored; ...`.
  read -r passed failed ignored < <(awk '/^test result:/ { found = 1
                   for (i = 2; i <= NF; i++) {
                     if ($i ~ /^passed/) p += $(i - 1)
                     if ($i ~ /^failed/) f += $(i - 1)
                     if ($i ~ /^ignored/) g += $(i - 1)
                   } }
                 END { if (found) print p + 0, f + 0, g + 0; else print "-", "-", "-" }' "$log")
  if ((status == 0)); then
    state="ok"
  else
    state="FAIL (exit $status"
    ((status == 124 || status == 137)) && state+=", timed out"
    local sanitizer_errors
    sanitizer_errors="$(sed -n 's/^========= ERROR SUMMARY: \([0-9]*\) error.*/\1/p' "$log" | tail -n 1)"
    [[ -n $sanitizer_errors ]] && state+=", $sanitizer_errors sanitizer errors"
    state+=")"
    failures=$((failures + 1))
  fi
  rows+=("$(printf '%-6s %-28s %6s %6s %7s  %s' "$kind" "$name" "$passed" "$failed" "$ignored" "$state")")
}

shopt -s nullglob
tests=("$here"/bin/tests/*)
benches=("$here"/bin/benches/*)
if ((${#tests[@]} == 0)); then
  echo "run.sh: no test binaries in $here/bin/tests" >&2
  exit 1
fi

cd "$here" || exit 1
for bin in "${tests[@]}"; do
  name="$(basename "$bin")"
  log="$logs/$name.log"
  cmd=("$bin" --test-threads=1 "${test_args[@]}")
  [[ -n $sanitizer ]] && cmd=("$sanitizer_bin" --tool "$sanitizer" --error-exitcode 1 "${cmd[@]}")
  echo
  echo "---- test $name"
  "${wrapper[@]}" "${cmd[@]}" >"$log" 2>&1
  status=$?
  if ((status == 0)); then
    grep -E '^test result:' "$log" || tail -n 3 "$log"
  else
    # The failing tests' panics are at the end of libtest's output.
    tail -n 60 "$log"
  fi
  record "$name" test "$log" "$status"
done

if ((run_bench)); then
  for bin in "${benches[@]}"; do
    name="$(basename "$bin")"
    log="$logs/bench-$name.log"
    echo
    echo "---- bench $name"
    "${wrapper[@]}" "$bin" --bench --warm-up-time 1 --measurement-time 3 2>&1 | tee "$log"
    record "$name" bench "$log" "${PIPESTATUS[0]}"
  done

  # The same shapes in PyTorch/torchvision, in this run, next to the medians the benches just wrote.
  echo
  echo "---- peer (PyTorch)"
  peer_log="$logs/peer.log"
  if python3 -c "import torch" >/dev/null 2>&1; then
    "${wrapper[@]}" python3 "$here/peer/bench_peer.py" --criterion "$CRITERION_HOME" --out "$logs/peer.md" 2>&1 |
      tee "$peer_log"
    record peer bench "$peer_log" "${PIPESTATUS[0]}"
  else
    echo "python3 cannot import torch: peer comparison not run" | tee "$peer_log"
    record peer bench "$peer_log" 1
  fi
fi

{
  echo
  echo "==================== summary ===================="
  printf '%-6s %-28s %6s %6s %7s  %s\n' kind binary passed failed ignored status
  printf '%s\n' "${rows[@]}"
  echo
  if ((failures == 0)); then
    echo "all ${#rows[@]} binaries passed"
  else
    echo "$failures of ${#rows[@]} binaries FAILED (logs: $logs)"
  fi
} | tee "$logs/summary.txt"

((failures == 0))
RUN_SH
chmod 755 "$pack/run.sh"

size="$(du -sb "$pack" | cut -f1)"
log "packed $(find "$pack/bin" -type f | wc -l) binaries into $pack: $((size / 1024)) KiB"
sed -n '/^files:/,$p' "$pack/BUILD_INFO" >&2

archive="$repo/gpu-pack.tar.xz"
log "compressing to $archive (xz -9, a minute or two)"
rm -f "$archive"
tar -C "$repo" -cf - gpu-pack | xz -9 -T0 >"$archive.tmp"
mv "$archive.tmp" "$archive"
archive_size="$(stat -c %s "$archive")"
log "archive: $((archive_size / 1024)) KiB"
((archive_size < max_bytes)) ||
  die "$archive is $((archive_size / 1024 / 1024)) MiB, over the 64 MiB a device run can carry"
log "carry gpu-pack.tar.xz, then run: tar xJf gpu-pack.tar.xz && bash gpu-pack/run.sh   (add --no-bench, --sanitizer memcheck, ...)"
