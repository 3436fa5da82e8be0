"""Network-on-chip blocks: flits, router, mesh, network interface (issue 6)."""
