"""The subcommands of `hps`: name -> (module, attribute). Modules load on first use.

Only commands that work are registered here.
"""

COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("hps_cli.commands.bench", "bench_group"),
    "build-graph": ("hps_cli.commands.build_graph", "build_graph_command"),
    "convert": ("hps_cli.commands.convert", "convert_command"),
    "dissect": ("hps_cli.commands.dissect", "dissect_command"),
    "serve": ("hps_cli.commands.serve", "serve_command"),
    "table": ("hps_cli.commands.table", "table_group"),
    "validate-config": ("hps_cli.commands.validate_config", "validate_config_command"),
}
