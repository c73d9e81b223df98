"""Edge node: captures a camera, codes every frame in two layers, streams base layers to the cloud.

The residual (human-quality) layer stays on the edge and is served on the cloud's request.
"""
