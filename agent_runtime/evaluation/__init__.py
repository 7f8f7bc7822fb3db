"""Evaluation suites: cases graded on what the agent answers, gated on accuracy, cost and latency.

`suite` (the YAML model), `graders` and `report` are pure; `judge` calls a provider; `runner` talks
to a task API; `command` is `agentctl eval` / `agent-runtime eval`. See docs/evaluation.md.
"""
