"""Integration tests: pure modules proven against real servers (prometheus) on loopback ports."""
