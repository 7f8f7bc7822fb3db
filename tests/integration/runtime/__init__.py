"""Tests of the bundled agent runtime (`agent_runtime`)."""
