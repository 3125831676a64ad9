"""Bridges to other training stacks (``trl``: GRAO as a TRL trainer)."""
