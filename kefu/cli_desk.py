"""`kefu desk ...`: check a desk configuration and show its routing table."""

from __future__ import annotations

import argparse
import sys


def _load(path: str):
    from .config import ConfigError
    from .settings import from_file

    try:
        return from_file(path)
    except ConfigError as e:
        print(f"{path}: bad config", file=sys.stderr)
        for p in e.problems:
            print(f"{path}: {p}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    s = _load(args.file)
    if s is None:
        return 2
    langs: dict[str, int] = {}
    for a in s.answers.answers.values():
        for lang in a.langs:
            langs[lang] = langs.get(lang, 0) + 1
    per = "".join(f", {n} in {lang}" for lang, n in sorted(langs.items()))
    print(f"{args.file}: ok ({len(s.teams)} teams, {len(s.agents)} agents, {len(s.router.rules)} routing rules, "
          f"{len(s.answers.answers)} bot answers{per}; customers of unknown language read {s.language})")
    return 0


def _rules(args: argparse.Namespace) -> int:
    s = _load(args.file)
    if s is None:
        return 2
    print(s.router.table())
    return 0


def register(sub) -> None:
    d = sub.add_parser("desk", help="customer-service desk tools",
                       description="Check the desk's configuration (teams, agents, routing, bot answers).")
    dsub = d.add_subparsers(dest="desk_command", metavar="COMMAND", required=True)
    c = dsub.add_parser("check", help="validate the desk sections of a config file and its answers file",
                        description="Validate everything the desk reads: cross-references between teams, agents "
                        "and routing rules, and the bot's answers file. Exit 0 when valid, 2 when not.")
    c.add_argument("file", metavar="FILE")
    c.set_defaults(func=_check)
    r = dsub.add_parser("rules", help="print the routing decision table",
                        description="Print the routing table in the order it is applied (first match wins).")
    r.add_argument("file", metavar="FILE")
    r.set_defaults(func=_rules)
