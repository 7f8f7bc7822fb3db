"""Test support: real servers started on free loopback ports, and fakes that speak real protocols over HTTP."""
