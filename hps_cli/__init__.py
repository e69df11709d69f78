"""hps: deploy large embedding tables (NVIDIA HPS-compatible). The CLI is hps_cli.cli."""

__version__ = "0.1.0"
