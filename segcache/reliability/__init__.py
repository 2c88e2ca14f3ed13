"""Reliability tooling: a concurrent multi-tenant load run, a bad-input table, and a timing audit.

Each tool talks to a real server over loopback (or starts one with `--spawn`) and reports what it
saw; the figures in RELIABILITY.md come from these commands.
"""
