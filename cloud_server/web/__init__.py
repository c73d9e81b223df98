"""Operator web view: a small HTTP gateway (``icmh-web``) in front of the cloud's Operator and Detections gRPC API.

The browser sends the operator's token with every request; the gateway forwards it unchanged as
``authorization: Bearer TOKEN`` and never calls the cloud without one, so the cloud decides every access and the
web layer holds no privilege of its own (see docs/web.md).
"""
