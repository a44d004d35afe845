"""One module per CLI command; ``cli.py`` assembles them into a click group."""
