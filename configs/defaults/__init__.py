"""The default recipes of ``acamkd-distill`` (``<task>.yaml``), installed as package data."""
