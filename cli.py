"""``python cli.py COMMAND``: the scenetag command line from a source checkout.

The group lives in :mod:`scenetag.cli` (installed as the ``scenetag`` script);
this file only runs it, so the checkout works with or without an install.
"""

from scenetag.cli import main

if __name__ == "__main__":
    main()
