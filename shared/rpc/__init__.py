"""gRPC contract of the service (package ``icmh.v1``), generated from ``proto/icmh/v1``.

Import the generated modules as ``icmh.rpc.edge_pb2`` etc.; regenerate them with
``python -m icmh.rpc.generate`` after changing a ``.proto`` file.
"""
