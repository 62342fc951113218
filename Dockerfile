# podgate container image.
#
# Two final targets:
#
#   release (the default, last stage): builds podgate from source in
#     BUILDER_IMAGE and copies the static binary into BASE_IMAGE.
#       docker build -t REGISTRY/podgate:TAG .
#       docker build --build-arg BASE_IMAGE=scratch -t REGISTRY/podgate:TAG .
#
#   local: FROM scratch with a bin/podgate built on the host (`make build`).
#     Needs no registry at all; hack/image.sh (`make image`) uses it:
#       make build && podman build --target local -t localhost/podgate:dev .
#
# The binary is static (CGO_ENABLED=0), so either base works; the images hold
# nothing but /podgate (plus, for distroless, CA certificates, tzdata and an
# /etc/passwd with the nonroot user).
#
# User: the image's default user is 65532 (distroless "nonroot"), which is
# enough for `podgate version`, `podgate policy ...` and the other tools. The
# agent needs CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and CAP_IPC_LOCK, which a
# non-root process only gets through ambient capabilities, which Kubernetes
# cannot set; the DaemonSet (deploy/daemonset.yaml) therefore runs it with
# runAsUser: 0 and every other capability dropped.

ARG BUILDER_IMAGE=golang:1.27
ARG BASE_IMAGE=gcr.io/distroless/static:nonroot

# The local target comes first: `--target local` then never looks at the
# other stages, so it needs neither BUILDER_IMAGE nor BASE_IMAGE.
FROM scratch AS local
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=
LABEL org.opencontainers.image.title="podgate" \
      org.opencontainers.image.description="Per-node Kubernetes NetworkPolicy enforcer with an AF_XDP fastpath" \
      org.opencontainers.image.source="https://github.com/podgate/podgate" \
      org.opencontainers.image.url="https://github.com/podgate/podgate" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="scratch"
COPY --chmod=0755 bin/podgate /podgate
USER 65532:65532
ENTRYPOINT ["/podgate"]
CMD ["version"]

FROM --platform=$BUILDPLATFORM ${BUILDER_IMAGE} AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/podgate ./cmd/podgate

FROM ${BASE_IMAGE} AS release
ARG BASE_IMAGE
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=
LABEL org.opencontainers.image.title="podgate" \
      org.opencontainers.image.description="Per-node Kubernetes NetworkPolicy enforcer with an AF_XDP fastpath" \
      org.opencontainers.image.source="https://github.com/podgate/podgate" \
      org.opencontainers.image.url="https://github.com/podgate/podgate" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
COPY --from=build --chmod=0755 /out/podgate /podgate
USER 65532:65532
ENTRYPOINT ["/podgate"]
CMD ["version"]
