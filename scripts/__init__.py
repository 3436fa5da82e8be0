"""Command-line entry points (the `tessera` command)."""
