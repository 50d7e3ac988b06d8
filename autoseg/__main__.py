"""``python -m autoseg``: the same as the ``autoseg`` command."""

from autoseg.cli.commands import main

if __name__ == "__main__":
    main()
