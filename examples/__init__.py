"""Runnable examples of tfstatprune: ``python -m examples.<name>`` from the repository root."""
