#!/usr/bin/env bash
# Regenerates the Python gRPC code in ppp/v1/ from proto/ppp/v1/upstream.proto.
#
# Needs grpcio-tools (`pip install -r requirements-dev.txt`). Run it after the .proto changes and
# check the result in: the example itself runs without grpcio-tools. Set PYTHON to use another
# interpreter (for example a venv's).
set -euo pipefail

# protoc names the output after the path below the -I root, so run from this folder with the repo's
# proto/ as the root: ppp/v1/upstream.proto becomes ppp/v1/upstream_pb2.py here, and the generated
# imports (`from ppp.v1 import upstream_pb2`) resolve against this folder.
cd "$(dirname "$0")"
"${PYTHON:-python3}" -m grpc_tools.protoc -I ../../proto \
  --python_out=. --grpc_python_out=. --pyi_out=. \
  ppp/v1/upstream.proto
