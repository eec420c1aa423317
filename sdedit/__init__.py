"""Generated from proto/sdedit/v1/sdedit.proto by scripts/gen_proto.py; do not edit."""
