"""A gRPC C-core server (Python grpcio) for pickwise's tests: grpc.health.v1.Health/Check on
127.0.0.1, answering after --delay-ms, with initial metadata naming the server (x-backend) and
the deadline it received (x-time-remaining-ms). Prints its port, then serves until stdin closes."""

import argparse
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class Health(health_pb2_grpc.HealthServicer):
    def __init__(self, name, delay_s):
        self.name = name
        self.delay_s = delay_s

    def Check(self, request, context):
        remaining = context.time_remaining()
        left = "none" if remaining is None else str(int(remaining * 1000))
        context.send_initial_metadata((("x-backend", self.name), ("x-time-remaining-ms", left)))
        if self.delay_s:
            time.sleep(self.delay_s)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay-ms", type=int, default=0)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    port = server.add_insecure_port("127.0.0.1:0")
    health_pb2_grpc.add_HealthServicer_to_server(Health(f"127.0.0.1:{port}", args.delay_ms / 1000), server)
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # the test process closes stdin (or dies): stop
    server.stop(0)


if __name__ == "__main__":
    main()
