"""Helpers for tests: real servers (dnsmasq) run as child processes, and shared data."""
