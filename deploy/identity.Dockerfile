# syntax=docker/dockerfile:1
# The paddock-identity service. Build from the repository root:
#   docker build -f deploy/identity.Dockerfile -t paddock-identity .
# (docker-compose.yml does this.) Nothing in CI builds this image.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p paddock-identity --bin paddock-identity \
    && cp target/release/paddock-identity /usr/local/bin/paddock-identity

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/paddock --create-home paddock
COPY --from=build /usr/local/bin/paddock-identity /usr/local/bin/paddock-identity
USER paddock
WORKDIR /var/lib/paddock
# Inside a container the service must listen on every interface; publish
# the port only where clients need it.
ENV PADDOCK_IDENTITY_LISTEN=0.0.0.0:7101 \
    PADDOCK_DATA_DIR=/var/lib/paddock \
    PADDOCK_SERVICE_TOKEN_FILE=/var/lib/paddock/service-token
VOLUME ["/var/lib/paddock"]
EXPOSE 7101
# The service shuts down gracefully on SIGINT.
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/paddock-identity"]
