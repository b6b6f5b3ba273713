#!/bin/sh
# Installs everything emitd needs to build, run and test on Debian 12.
# Run as root. Safe to run again.
set -eu
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" != 0 ]; then
  echo "deps.sh: run as root (it uses apt-get)" >&2
  exit 1
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  build-essential cmake pkg-config ca-certificates openssl \
  libuv1-dev liblmdb-dev lmdb-utils libcurl4-openssl-dev \
  libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libprotobuf-dev \
  libinih-dev libjsmn-dev libssl-dev zlib1g-dev libzstd-dev libxxhash-dev \
  libmicrohttpd-dev libsystemd-dev libcmocka-dev \
  clang libclang-rt-14-dev valgrind \
  python3 python3-pytest python3-prometheus-client netcat-openbsd systemd \
  zstd >/dev/null
