"""``python -m autoseg.cli`` (torchrun's ``-m autoseg.cli train ...``): the ``autoseg`` command."""

from autoseg.cli.commands import main

if __name__ == "__main__":
    main()
