"""SDEdit as a gRPC service: gradient-free image editing with diffusion models."""

__version__ = "0.1.0"
