#!/usr/bin/env bash
# Regenerates the Go code in ppp/v1/ from proto/ppp/v1/upstream.proto.
#
# Needs protoc and its Go plugins. On Debian 12 (what build.sh uses, offline):
#   apt-get install protobuf-compiler protoc-gen-go protoc-gen-go-grpc
# which give protoc 3.21, protoc-gen-go 1.28.1 and protoc-gen-go-grpc 1.0 (from grpc-go 1.33.3):
# the generated code then compiles against Debian's golang-google-grpc-dev (1.33.3) and
# golang-google-protobuf-dev (1.28.1). A newer protoc-gen-go-grpc (1.3+) emits code that needs a
# newer grpc-go (grpc.SupportPackageIsVersion9, grpc.BidiStreamingServer): use it only with
# modules (README.md, "Elsewhere, with Go modules").
#
# The .proto has no `go_package` option (it is shared by every language); the import path is given
# here with M flags instead. Run it after the .proto changes and check the result in.
set -euo pipefail

# The Go import path of this folder: build.sh links $GOPATH/src/$IMPORT_PATH to it.
IMPORT_PATH=persistentparadoxplex/examples/go
PROTO=ppp/v1/upstream.proto

for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || {
    echo "generate.sh: $tool not found (Debian: apt-get install protobuf-compiler protoc-gen-go protoc-gen-go-grpc)" >&2
    exit 1
  }
done

# protoc names the output after the path below -I; paths=source_relative puts it in ./ppp/v1/.
cd "$(dirname "$0")"
protoc -I ../../proto \
  --go_out=. --go_opt=paths=source_relative --go_opt="M$PROTO=$IMPORT_PATH/ppp/v1;pppv1" \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative --go-grpc_opt="M$PROTO=$IMPORT_PATH/ppp/v1;pppv1" \
  "$PROTO"
echo "generate.sh: wrote ppp/v1/upstream.pb.go and ppp/v1/upstream_grpc.pb.go ($(protoc --version), protoc-gen-go $(protoc-gen-go --version 2>&1 | awk '{print $2}'), protoc-gen-go-grpc $(protoc-gen-go-grpc --version 2>&1 | awk '{print $2}'))"
