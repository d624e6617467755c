"""gRPC C-core's own xDS client (Python grpcio) for pickwise's cross-checks.

Connects to xds:///NAME with the bootstrap in GRPC_XDS_BOOTSTRAP / GRPC_XDS_BOOTSTRAP_CONFIG and
sends grpc.health.v1.Health/Check, reading the serving backend from the `x-backend` initial
metadata the test backends send.

  --keys FILE --header H   one call per line of FILE with header H set; prints "KEY BACKEND"
  --count N                N calls; prints one JSON object {backend: count}
"""

import argparse
import json
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def call(stub, metadata):
    for attempt in range(50):
        try:
            _, c = stub.Check.with_call(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=5,
                                        wait_for_ready=True)
            return dict(c.initial_metadata()).get("x-backend", "?")
        except grpc.RpcError as e:
            if attempt == 49:
                raise
            time.sleep(0.1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--keys")
    p.add_argument("--header")
    p.add_argument("--count", type=int, default=0)
    a = p.parse_args()
    with grpc.insecure_channel(a.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        if a.keys:
            with open(a.keys) as f:
                for line in f:
                    key = line.strip()
                    if key:
                        print(key, call(stub, ((a.header, key),)), flush=True)
        else:
            counts = {}
            for _ in range(a.count):
                b = call(stub, ())
                counts[b] = counts.get(b, 0) + 1
            print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
