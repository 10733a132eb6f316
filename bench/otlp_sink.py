"""An OTLP/gRPC trace collector that counts the spans it is sent and keeps nothing: for measuring what
tracing costs the daemon (`bench/ab.py` with TELEMETRY_TRACES on one side).

    python bench/otlp_sink.py --port 4317

Prints the number of spans received every 10 s and when stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

REPORT_EVERY_S = 10.0


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans += len(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=4317)
    args = parser.parse_args(argv)
    sink = Sink()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    print(f"listening on 127.0.0.1:{args.port}", file=sys.stderr)
    try:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            print(f"{sink.spans} spans received", file=sys.stderr)
    finally:
        print(f"{sink.spans} spans received", file=sys.stderr)
        await server.stop(grace=None)


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
