"""Command-line entry points that wire several layers together (see docs/extending.md for the layering)."""
