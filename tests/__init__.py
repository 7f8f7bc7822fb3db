"""Tests of the AgentService operator and the agent runtime."""
