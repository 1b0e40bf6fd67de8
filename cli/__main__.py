"""``python -m cli``: the same as the ``legion`` command."""

from cli.main import main

main()
