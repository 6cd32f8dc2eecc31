"""The CLI's commands, one module per audience; cli.py registers them."""
