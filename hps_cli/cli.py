"""The `hps` command: a lazily loading Click group and the one error boundary of the CLI.

Subcommand modules are imported only when used (and for --help, which imports no TensorFlow or
PyCUDA either: command modules import those inside their bodies). Every typed library error
(hps_cli.runtime.errors) becomes one line on stderr, a hint, and its documented exit code.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import traceback

import click

from . import __version__
from .commands import COMMANDS
from .common.tf_loader import set_debug
from .output import Settings


class LazyGroup(click.Group):
    """A group whose subcommands are imported from ``COMMANDS`` on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[name]
        module = importlib.import_module(module_name)
        return getattr(module, attr)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Environment: HPS_CACHE_BACKEND, HPS_DIRECT_IO, HPS_KERNEL_CACHE, HPS_NATIVE, "
    "HPS_ADMIN_TOKEN, HPS_SERVE_UVLOOP, HPS_DEBUG, TF_USE_LEGACY_KERAS, HPS_CRASH_AT, "
    'HPS_REQUIRE_GPU and HPS_REQUIRE_GPUS (tests); see docs/config.md, "Environment variables".',
)
@click.version_option(__version__, "-V", "--version", prog_name="hps")
@click.option(
    "--debug",
    is_flag=True,
    envvar="HPS_DEBUG",
    help="Show full tracebacks on errors, and TensorFlow's load-time log lines (also HPS_DEBUG=1).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or status messages.")
@click.option(
    "--json",
    "json_mode",
    is_flag=True,
    help="Machine-readable output: one JSON document on stdout.",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, json_mode: bool) -> None:
    """Deploy large embedding tables with NVIDIA HPS-compatible files and configs.

    Data goes to stdout, messages and progress to stderr. Exit codes: 0 ok, 1 unexpected
    failure, 2 usage error, 3 invalid input, 4 destination exists or locked, 5 missing optional
    dependency, 6 service unavailable, 7 a check of the result failed, 130 interrupted (SIGINT),
    143 terminated (SIGTERM); outputs in progress are removed before either exit.
    """
    ctx.obj = Settings(debug=debug, quiet=quiet, json=json_mode)
    if debug:
        set_debug(True)  # TensorFlow's load-time lines too, wherever a command imports it


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("HPS_DEBUG", "") not in ("", "0")


def _raise_terminated(signum, frame) -> None:
    from .runtime.errors import Terminated

    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and map every failure to an exit code.

    SIGTERM raises ``Terminated`` in the main thread (as SIGINT raises KeyboardInterrupt), so
    the cleanups of whatever was being written run before the process exits with 143 (130 for
    SIGINT). ``hps serve`` installs its own handlers (a graceful drain) once it runs.
    """
    from .runtime.errors import ExitCode, HpsError, Terminated

    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        # Without standalone mode Click returns ctx.exit()'s code instead of exiting.
        code = cli.main(args=args, prog_name="hps", standalone_mode=False)
    except HpsError as exc:
        _report(exc, debug, json_mode="--json" in args)
        sys.exit(int(exc.exit_code))
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "hps"
        click.echo(f"hint: '{where} --help' lists the arguments and options", err=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        click.echo("hint: what was being written was removed; rerun the command", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except Terminated:
        click.echo("terminated (SIGTERM)", err=True)
        click.echo("hint: what was being written was removed; rerun the command", err=True)
        sys.exit(int(ExitCode.TERMINATED))
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): not an error of ours.
        sys.stderr.close()
        sys.exit(0)
    except Exception as exc:  # the boundary: anything else is a bug, reported in one line
        if debug:
            traceback.print_exc()
        click.echo(f"error: unexpected {type(exc).__name__}: {exc}", err=True)
        click.echo("hint: rerun with --debug for the traceback, and report it", err=True)
        sys.exit(int(ExitCode.FAILURE))
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code if isinstance(code, int) else 0)


def _report(exc, debug: bool, json_mode: bool) -> None:
    if debug:
        traceback.print_exc()
    if json_mode:
        click.echo(json.dumps({"ok": False, **exc.to_dict()}, indent=2))
    click.echo(f"error: {exc}", err=True)
    click.echo(f"hint: {exc.hint or type(exc).default_hint}", err=True)
