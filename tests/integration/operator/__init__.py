"""Tests of the operator against kmock's Kubernetes emulator (the dev cluster) over HTTP."""
