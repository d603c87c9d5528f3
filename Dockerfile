# PersistentParadoxPlex: the node (`ppp`) and the example echo upstream (`echo_upstream`).
#
#   docker build -t persistentparadoxplex .
#   docker run -p 7999:7999 -p 8000:8000 -e PPP_ADMIN_TOKEN=… persistentparadoxplex --upstream http://…
#
# Configuration is through PPP_* environment variables only (docs/operations.md lists them).

FROM rust:1-bookworm AS build
WORKDIR /src
# protox compiles the protocol in build.rs: no protoc needed.
COPY . .
RUN cargo build --release --locked --bin ppp --example echo_upstream \
    && mkdir /out \
    && cp target/release/ppp target/release/examples/echo_upstream /out/ \
    && strip /out/*

# glibc and libgcc only, no shell, runs as a non-root user: about 30 MB.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ppp /out/echo_upstream /usr/local/bin/
USER nonroot
ENV PPP_LISTEN=0.0.0.0:7999 \
    PPP_ADMIN_LISTEN=0.0.0.0:8000 \
    PPP_LOG_FORMAT=json
EXPOSE 7999 8000
# `ppp ready` asks the node's own /readyz (ready = listener up and, in a cluster, Redis reachable).
HEALTHCHECK --interval=5s --timeout=4s --start-period=10s --retries=3 CMD ["ppp", "ready"]
ENTRYPOINT ["ppp"]
