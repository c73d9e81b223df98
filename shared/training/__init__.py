"""Training of the project's codecs on CPU (data, masks, loops, export)."""
