#!/bin/sh
# Runs emitd's libFuzzer targets, each for a bounded time.
#
#   fuzz/run.sh [-s SECONDS] [-b BUILD_DIR] [-w WORK_DIR] [NAME...]
#
# NAME is a target without its fuzz_ prefix (json, frame, config, ...);
# none means every fuzz/fuzz_*.c. SECONDS (default 25) is per target;
# BUILD_DIR (default build-fuzz) is a tree configured with CC=clang and
# -DEMD_FUZZ=ON; WORK_DIR (default BUILD_DIR/fuzz/work) keeps what the
# fuzzer learns between runs (corpus/NAME) and what it finds
# (artifacts/NAME). Extra libFuzzer flags go in EMD_FUZZ_FLAGS, e.g.
# EMD_FUZZ_FLAGS="-jobs=4 -workers=4".
#
# Each target first runs every file of fuzz/corpus/NAME once (the seeds
# and every crash found so far), so a regression fails at once and names
# its file; then it fuzzes from those and from WORK_DIR/corpus/NAME. Exits
# non-zero if any target crashed, leaked, timed out or ran out of memory,
# after printing the reproducer's path and how to replay it.
set -u

src=$(cd "$(dirname "$0")" && pwd)
secs=25
build=$src/../build-fuzz
work=

while getopts s:b:w: opt; do
  case $opt in
    s) secs=$OPTARG ;;
    b) build=$OPTARG ;;
    w) work=$OPTARG ;;
    *) sed -n '3,9p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
: "${work:=$build/fuzz/work}"
flags="-timeout=5 -rss_limit_mb=2048"

if [ $# -eq 0 ]; then
  for f in "$src"/fuzz_*.c; do
    n=${f##*/fuzz_}
    set -- "$@" "${n%.c}"
  done
fi

# The longest input worth trying: a little over what each parser is
# meant to see (config lines stop at 199 characters, commands at a few
# words), small enough to stay fast.
max_len() {
  case $1 in
    json) echo 8192 ;;
    control) echo 1024 ;;
    *) echo 4096 ;;
  esac
}

# The path of the input a failed run left, from its log.
artifact() {
  sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$1" | tail -n 1
}

# Replays every corpus file once. A crash names its file.
replay() {
  name=$1 bin=$2 log=$3
  set -- "$src/corpus/$name"/*
  [ -e "$1" ] || return 0
  # shellcheck disable=SC2086
  if "$bin" $flags "$@" >"$log" 2>&1; then
    echo "fuzz/$name: replayed $# corpus inputs"
    return 0
  fi
  tail -n 60 "$log"
  bad=$(sed -n 's/^Running: //p' "$log" | tail -n 1)
  echo "fuzz/$name: FAILED on a corpus input (a regression): ${bad:-see $log}"
  echo "  replay: $bin ${bad:-$src/corpus/$name/*}"
  return 1
}

# Fuzzes for $secs seconds from the corpus.
run() {
  name=$1 bin=$2 log=$3
  dict=
  [ -f "$src/$name.dict" ] && dict="-dict=$src/$name.dict"
  mkdir -p "$work/corpus/$name" "$work/artifacts/$name"
  rm -f "$work/artifacts/$name"/*
  # shellcheck disable=SC2086
  if "$bin" $flags -max_total_time="$secs" -max_len="$(max_len "$name")" \
      -artifact_prefix="$work/artifacts/$name/" -print_final_stats=1 \
      $dict ${EMD_FUZZ_FLAGS:-} "$work/corpus/$name" "$src/corpus/$name" \
      >"$log" 2>&1; then
    runs=$(sed -n 's/^#\([0-9][0-9]*\)[^0-9].*/\1/p' "$log" | tail -n 1)
    cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' "$log" | tail -n 1)
    echo "fuzz/$name: ${secs}s, ${runs:-?} runs, ${cov:-?} edges, ok"
    return 0
  fi
  tail -n 60 "$log"
  found=$(artifact "$log")
  echo "fuzz/$name: FAILED; reproducer: ${found:-none written, see $log}"
  if [ -n "$found" ]; then
    echo "  replay: $bin $found"
    echo "  keep it as a regression: cp $found $src/corpus/$name/"
  fi
  return 1
}

status=0
for name in "$@"; do
  bin=$build/fuzz/fuzz_$name
  if [ ! -x "$bin" ]; then
    echo "fuzz/$name: no $bin; build with CC=clang and -DEMD_FUZZ=ON" >&2
    status=1
    continue
  fi
  mkdir -p "$work/logs"
  if ! replay "$name" "$bin" "$work/logs/$name-replay.log" ||
     ! run "$name" "$bin" "$work/logs/$name.log"; then
    status=1
  fi
done
exit $status
