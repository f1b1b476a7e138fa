"""`kefu token` and `kefu widget` commands: credentials for the HTTP API, the console
and the widget. Parses, calls, prints; the logic lives in bridge/identity.py."""

from __future__ import annotations

import argparse


def _cmd_token_new(args: argparse.Namespace) -> int:
    from .identity import new_token, sha256_hex

    if args.role == "agent" and not args.agent:
        print("kefu token new: --agent ID is required for --role agent", flush=True)
        return 2
    token = new_token()
    print(f"token (give it to its holder; it is not stored anywhere): {token}")
    print()
    print("# add to your config file:")
    print("[[api.tokens]]")
    print(f'name = "{args.name or args.agent or args.role}"')
    print(f'token_sha256 = "{sha256_hex(token)}"')
    print(f'role = "{args.role}"')
    if args.agent:
        print(f'agent = "{args.agent}"')
    return 0


def _cmd_widget_sign(args: argparse.Namespace) -> int:
    from .identity import sign_identity

    print(sign_identity(args.secret, args.id))
    return 0


def register(sub) -> None:
    t = sub.add_parser("token", help="API and console tokens", description="Tokens for the HTTP API and the agent console.")
    tsub = t.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    n = tsub.add_parser(
        "new",
        help="make a token and print its [[api.tokens]] entry",
        description="Make a random token; print it once, with the [[api.tokens]] entry (its SHA-256) for the config.",
    )
    n.add_argument("--role", choices=("agent", "operator"), default="agent")
    n.add_argument("--agent", metavar="ID", help="the agent id the token signs in as (role agent)")
    n.add_argument("--name", help="a label for logs (default: the agent id)")
    n.set_defaults(func=_cmd_token_new)

    w = sub.add_parser("widget", help="widget tools", description="Tools for sites that embed the chat widget.")
    wsub = w.add_subparsers(dest="widget_command", metavar="COMMAND", required=True)
    s = wsub.add_parser(
        "sign",
        help="compute a visitor's identity hash (what the site's backend does)",
        description="Print hex HMAC-SHA256(secret, id): the data-identity-hash for a visitor id.",
    )
    s.add_argument("--secret", required=True, help="the site's identity_secret")
    s.add_argument("id", help="the visitor's id on the site")
    s.set_defaults(func=_cmd_widget_sign)
