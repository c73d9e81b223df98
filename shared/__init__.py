"""Code shared by the edge node and the cloud server: codec, bitstream, config."""
