"""What only the command line needs: `ml-assets` and the local machinery it drives."""

from ml_assets.cli.main import build_parser, dev_command, main

__all__ = ["build_parser", "dev_command", "main"]
