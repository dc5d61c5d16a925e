#!/bin/sh
# Regenerates pidmapv1/ (the Go messages and gRPC client) from
# proto/pidmap/v1/pidmap.proto, with Debian 12's protoc (3.21.12),
# protoc-gen-go (1.28.1) and protoc-gen-go-grpc (grpc-go 1.33.3): the
# versions are written into the files, so other versions give a diff.
#
#   clients/go/generate.sh [OUT]
#
# writes OUT/pidmapv1/ (default: this directory). The test suite runs it into
# a temporary directory and compares the result with the committed files.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
	command -v "$tool" >/dev/null || {
		echo "generate.sh: $tool not found (apt-get install protobuf-compiler protoc-gen-go protoc-gen-go-grpc)" >&2
		exit 1
	}
done
out=${1:-$here}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$here/../.."
protoc -I proto \
	--go_out="$out" --go_opt=module=pidmap/clients/go \
	--go-grpc_out="$out" --go-grpc_opt=module=pidmap/clients/go \
	pidmap/v1/pidmap.proto
