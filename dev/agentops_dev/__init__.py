"""Development tools, never shipped in the image: the dev cluster, the demo, the local model and Redis."""
