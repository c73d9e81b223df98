"""Plumbing shared by the edge node, the cloud server and the operator CLI (gRPC, SQLite, process setup).

The codec library (:mod:`icmh.codec`) does not import anything from here.
"""
