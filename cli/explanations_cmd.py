"""``saejobs features import|search``: Neuronpedia's explanations, cached in the database (placeholder)."""

from __future__ import annotations

COMMANDS: list = []
