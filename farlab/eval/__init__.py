"""Evaluation: metrics (one place per metric), the direct eval loop, the transfer gap."""
