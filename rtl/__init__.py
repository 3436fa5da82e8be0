"""Tessera's Amaranth hardware: shared pieces here, tiles in rtl.tiles, the NoC in rtl.noc."""
