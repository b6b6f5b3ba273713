#!/bin/sh
# bench/run.sh: the whole benchmark in one command (README, "Performance").
#
#   bench/run.sh                 build (build-bench/, RelWithDebInfo as
#                                `make build` does) and run every test
#                                three times (--runs 3: the median run)
#   bench/run.sh --json          the same, as JSON
#   bench/run.sh --backlog 1000000 --events 500000   smaller, quicker
#
# Arguments go to `emitd-bench all` (see `emitd-bench --help`). BUILD
# picks another build directory; NO_BUILD=1 skips the build step.
#
# On the 2-core machine of the README the whole run takes 8 to 15 minutes.
# The backlog test fills a spool with 5 000 000 events (--backlog): about
# 2.5 GB in /tmp, and about 6.5 GB while it runs (it keeps each of its
# spools until it ends, and ingests into an empty and the full spool
# --pairs times, 3 by default); each of its runs writes about 3 GB to
# the disk.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
build=${BUILD:-$src/build-bench}

if [ "${NO_BUILD:-0}" != 1 ]; then
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j"$(nproc)" >/dev/null
fi

# The machine, for the README to quote; on stderr when stdout is JSON.
out=1
for a in "$@"; do
  [ "$a" = --json ] && out=2
done
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
{
  echo "nproc: $(nproc)"
  echo "cpu: ${cpu:-unknown}"
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
} >&$out

# Three runs of each test, the median shown (with the range): figures on
# a shared VM move by up to 1.5x from one run to the next. A --runs given
# here comes later and wins.
exec "$build/bench/emitd-bench" all --runs 3 "$@"
