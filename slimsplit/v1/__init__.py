"""Generated protobuf/gRPC stubs of ``protos/slimsplit/v1`` (do not edit; see tools/gen_protos.py)."""
