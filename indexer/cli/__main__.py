"""``python -m indexer.cli`` runs the ``medsearch`` command."""

from indexer.cli.app import main

main()
