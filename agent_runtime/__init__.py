"""The bundled agent runtime: task API, Redis Streams queue, workers and the agent loop."""
