"""The doors: gRPC (service.transport.grpc) and HTTP/JSON with SSE (service.transport.http).

Both hand every request to the one call pipeline (service.pipeline.calls) and only convert
their wire formats to the pipeline's plain types and back."""
