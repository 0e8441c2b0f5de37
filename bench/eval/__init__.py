"""Helpers for bench/eval_templates.py: scripted runs, an oracle provider,
the agent driver and the workloads (BFCL multi-turn, our own workflows)."""
