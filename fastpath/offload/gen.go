package offload

// The BPF programs are compiled from bpf/offload.c by bpf2go into
// offload_bpfel.{go,o} and offload_bpfeb.{go,o}, which are committed so that
// building needs no clang. `make generate` installs clang, llvm and
// libbpf-dev when missing and runs this. Keep the bpf2go version equal to
// the cilium/ebpf version in go.mod (TestGenerateVersion checks it).
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go@v0.22.0 -target bpfel,bpfeb -no-global-types -cflags "-O2 -g -Wall -Werror -mcpu=v3" offload bpf/offload.c -- -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
