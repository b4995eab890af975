"""``saejobs features``: find the features to steer, offline — the SAE's top features per token
(``top``), the nearest features by decoder cosine (``similar``), and explanations cached from Neuronpedia
(``import``, ``search``: ``cli/explanations_cmd.py``)."""

from __future__ import annotations

import click


@click.group()
def features() -> None:
    """Find features: top features of a text, similar features, cached Neuronpedia explanations."""


def _register() -> None:
    from saejobs.cli import explanations_cmd

    for cmd in explanations_cmd.COMMANDS:
        features.add_command(cmd)


_register()
