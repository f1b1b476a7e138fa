"""The `kefu` command line: parses, calls, prints. No business logic lives here.

Command groups that belong to one subsystem live in their own module exposing
``register(subparsers)`` and are listed in ``COMMAND_MODULES``; each parser sets
``func`` to a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# Subsystem command groups: module path, each with register(subparsers).
COMMAND_MODULES: list[str] = ["kefu.cli_nlp", "kefu.bridge.cli", "kefu.cli_storage", "kefu.cli_desk", "kefu.cli_ops"]

EPILOG = """\
examples:
  kefu serve                      start on embedded defaults (MQTT on 1883, web on 18083)
  kefu serve --config kefu.toml   start with a config file
  kefu config check kefu.toml     validate a config file and exit
  kefu config example             print every config key with its default and meaning
  kefu passwd                     hash a password for [[auth.users]]
"""


def _cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .checks import check_config
    from .config import ConfigError, load

    base_dir = Path(args.config).resolve().parent if args.config else None
    try:
        cfg = load(args.config)
        problems = check_config(cfg, base_dir).problems  # the same checks as `kefu config check`
        if problems:
            raise ConfigError(problems, args.config or "")
    except ConfigError as e:
        print(f"kefu: bad config\n{e}", file=sys.stderr)
        return 2
    from .app import serve_main

    return serve_main(cfg, base_dir)  # logs the check's warnings once logging is set up


def _cmd_config_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .checks import check_config
    from .config import ConfigError, load

    try:
        report = check_config(load(args.file), Path(args.file).resolve().parent)
        if report.problems:
            raise ConfigError(report.problems, args.file)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    for w in report.warnings:
        print(f"{args.file}: warning: {w}", file=sys.stderr)
    n = len(report.warnings)
    print(f"{args.file}: ok" + (f" ({n} warning{'s' if n > 1 else ''})" if n else ""))
    return 0


def _cmd_config_example(args: argparse.Namespace) -> int:
    from .config.reference import example_toml

    sys.stdout.write(example_toml())
    return 0


def _cmd_passwd(args: argparse.Namespace) -> int:
    import getpass

    from .broker.auth import hash_password

    pw = args.password
    if pw is None:
        pw = getpass.getpass("password: ")
        if getpass.getpass("again: ") != pw:
            print("kefu passwd: the two passwords differ", file=sys.stderr)
            return 2
    print(hash_password(pw))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kefu",
        description="kefu (客服): a self-hosted customer-service messaging hub with an embedded MQTT broker.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"kefu {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser(
        "serve",
        help="run kefu (broker, bridge, desk, API, dashboard) until SIGINT/SIGTERM",
        description="Run kefu in the foreground. Without --config it runs on embedded defaults: "
        "MQTT on 0.0.0.0:1883, MQTT over WebSocket and the browser chat protocol on 8083, "
        "the HTTP API, widget, agent console and dashboard on 18083, SQLite storage in ./kefu.db, "
        "live state in memory, and the shipped BANKING77 intent model. It prints every address it "
        "serves; SIGINT or SIGTERM stops accepting, flushes and exits within 2 seconds.",
    )
    s.add_argument("--config", "-c", metavar="FILE", help="TOML config file (see config/kefu.example.toml)")
    s.set_defaults(func=_cmd_serve)

    c = sub.add_parser("config", help="configuration tools", description="Configuration tools.")
    csub = c.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    cc = csub.add_parser(
        "check",
        help="validate a config file",
        description="Validate a config file with every check `kefu serve` runs at start: every problem is "
        "printed with its key path and the fix; exit status 0 when valid, 2 when not. Warnings (a desk whose "
        "handoffs reach no agent) are printed too and do not change the exit status.",
    )
    cc.add_argument("file", metavar="FILE")
    cc.set_defaults(func=_cmd_config_check)
    ce = csub.add_parser(
        "example",
        help="print the full config reference (every key, default and meaning)",
        description="Print the configuration reference: every key with its default and meaning, as TOML. "
        "config/kefu.example.toml is this output.",
    )
    ce.set_defaults(func=_cmd_config_example)

    pw = sub.add_parser(
        "passwd",
        help="hash a password for [[auth.users]]",
        description="Print a scrypt hash of a password, to paste into [[auth.users]] password_hash.",
    )
    pw.add_argument("password", nargs="?", help="the password (prompted for when omitted)")
    pw.set_defaults(func=_cmd_passwd)

    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
