#!/bin/sh
# Runs emitd on a local development setup: sockets and spool under ./dev,
# and the project's test upstream on 127.0.0.1 as the service, so events
# visibly flow. Ctrl-C stops both.
set -eu
BUILD=${1:-build}
DEV=$(pwd)/dev
mkdir -p "$DEV"
PORT=${EMD_DEV_PORT:-8787}
UPSTREAM="$BUILD/tests/upstream/emd-upstream"

cat > "$DEV/agent.conf" <<CONF
# Development configuration written by scripts/run-dev.sh.
[agent]
socket = $DEV/emitd.sock
control_socket = $DEV/control.sock
log_level = info

[spool]
dir = $DEV/spool

[upstream]
endpoint = http://127.0.0.1:$PORT
batch_linger = 100ms
CONF

pids=""
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

if [ -x "$UPSTREAM" ]; then
  "$UPSTREAM" --listen "127.0.0.1:$PORT" --record "$DEV/received.ndjson" &
  pids="$pids $!"
fi

"$BUILD/agent/emitd" --config "$DEV/agent.conf" &
pids="$pids $!"
sleep 0.5
cat <<MSG

emitd is running (config: $DEV/agent.conf).
Send an event:

  echo '{"context":[{"type":"type.googleapis.com/buildless.context.Build","event":"started"}]}' | nc -U -N $DEV/emitd.sock

What the local upstream received: $DEV/received.ndjson
Status: $BUILD/agent/emitctl -c $DEV/agent.conf status
Stop: Ctrl-C

MSG
wait
