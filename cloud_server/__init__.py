"""Cloud server: receives base layers from many edges, detects objects on the machine images,
publishes the detections, and serves frames to operators in machine or human quality."""
