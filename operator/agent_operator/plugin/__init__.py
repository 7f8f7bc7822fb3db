"""`kubectl agentservice`, the kubectl plugin (`cli.py`: commands and the cluster; `views.py`: the text)."""
