"""The gRPC transport: handlers convert messages to plain dataclasses and back."""
