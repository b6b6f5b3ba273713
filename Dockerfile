# emitd as a CI sidecar (SPEC 7): built from source on Debian 12, run as a
# non-root user, configured from the environment, logging JSON to stderr.
#   docker build -t emitd .
#   docker run -d --name emitd -v emitd-run:/run/emitd \
#     -v emitd-spool:/var/lib/emitd -e EMITD_UPSTREAM_ENDPOINT=https://... \
#     -e EMITD_UPSTREAM_API_KEY=... emitd
# The job container mounts the same emitd-run volume and sends events to
# /run/emitd/emitd.sock.

FROM debian:12-slim AS build
# The top CMakeLists.txt looks for cmocka and libmicrohttpd even with the
# tests off, so they are here too; none of this reaches the runtime image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config \
      libuv1-dev liblmdb-dev libcurl4-openssl-dev \
      libprotobuf-c-dev protobuf-c-compiler protobuf-compiler \
      libprotobuf-dev libinih-dev libjsmn-dev libssl-dev zlib1g-dev \
      libzstd-dev libxxhash-dev libsystemd-dev libcmocka-dev libmicrohttpd-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
      -DCMAKE_INSTALL_PREFIX=/usr/local -DEMD_INSTALL_CONFIG=OFF \
 && cmake --build /build -j"$(nproc)" \
 && DESTDIR=/stage cmake --install /build --strip

FROM debian:12-slim
# Only the shared libraries emitd and emitctl link against, and the CA
# bundle for https:// upstreams.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libuv1 liblmdb0 libcurl4 libprotobuf-c1 libinih1 libzstd1 zlib1g libxxhash0 \
      libssl3 libsystemd0 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /stage/usr/local/bin/emitd /stage/usr/local/bin/emitctl \
     /usr/local/bin/
# The directories belong to emitd before the volumes are mounted, so a new
# named volume starts out owned by emitd too.
RUN groupadd --system emitd \
 && useradd --system --gid emitd --home-dir /var/lib/emitd \
      --shell /usr/sbin/nologin emitd \
 && install -d -o emitd -g emitd -m 0755 /run/emitd \
 && install -d -o emitd -g emitd -m 0700 /var/lib/emitd

# No config file: SPEC 5's defaults plus EMITD_<SECTION>_<KEY> variables.
# Socket mode 0666, not 0660: the job container that shares /run/emitd runs
# as some other uid, in none of our groups, and must be able to connect.
# The volume is private to the pod or job, which is the boundary here; the
# control socket stays 0600 (emitctl in this container, as emitd).
ENV EMITD_AGENT_SOCKET=/run/emitd/emitd.sock \
    EMITD_AGENT_CONTROL_SOCKET=/run/emitd/control.sock \
    EMITD_AGENT_SOCKET_MODE=0666 \
    EMITD_AGENT_LOG_FORMAT=json \
    EMITD_SPOOL_DIR=/var/lib/emitd
VOLUME ["/run/emitd", "/var/lib/emitd"]
USER emitd
WORKDIR /var/lib/emitd

# SIGTERM drains: no new connections, every line read is answered, then
# forwarding goes on for agent.shutdown_grace (5 s) before exit 0. Give
# `docker stop -t` (or the pod's grace period) more than that. emitd runs
# as PID 1 and handles SIGTERM and SIGINT itself; it starts no children,
# so it needs no init to reap them.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["emitctl", "status"]
ENTRYPOINT ["emitd"]
