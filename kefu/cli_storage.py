"""`kefu db ...`, `kefu keys ...` and `kefu search`: parse, call storage, print.

Every command takes ``--config FILE`` (the same file `kefu serve` uses) and works on the
database its ``[storage]`` section names, beside a running kefu (SQLite WAL and
PostgreSQL both allow it). Exit status: 0 ok, 1 the operation failed, 2 bad usage or
configuration.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys

import trio


def _config(args):
    """The config ``--config`` names; a bad one prints its problems and exits 2 (also used by cli_ops)."""
    from .config import ConfigError, load

    try:
        return load(args.config)
    except ConfigError as e:
        print(f"kefu: bad config\n{e}", file=sys.stderr)
        raise SystemExit(2) from None


def _load(args):
    return _config(args).storage


def _where(s) -> str:
    return s.path if s.backend == "sqlite" else f"{s.dsn} (schema {s.pg_schema})"


def _fail(msg: str, code: int = 1) -> int:
    print(f"kefu: {msg}", file=sys.stderr)
    return code


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


# ------------------------------------------------------------------ db


def _cmd_db_upgrade(args) -> int:
    from .storage import StorageUnavailable, make_store

    s = _load(args)

    async def run():
        store = make_store(s)
        await store.open(upgrade=True)
        try:
            return await store.migration_status(), store.features
        finally:
            await store.close()

    try:
        states, features = trio.run(run)
    except (StorageUnavailable, ValueError) as e:
        return _fail(f"db upgrade: {e}")
    print(f"{s.backend}: {_where(s)}")
    for m in states:
        print(f"  {m.version:04d} {m.name:<12} {'applied' if m.done else 'skipped'}  {m.report}")
    for k, v in features.items():
        print(f"  {k}: {v}")
    return 0


def _status(s):
    from .storage import migrate

    if s.backend == "sqlite":
        import os
        import sqlite3

        if not os.path.exists(s.path):
            return None, {"sqlite": f"no database at {s.path} yet; `kefu db upgrade` creates it"}
        conn = sqlite3.connect(f"file:{s.path}?mode=ro", uri=True)
        try:
            return migrate.status(conn, "sqlite"), {"sqlite": sqlite3.sqlite_version, "path": s.path}
        finally:
            conn.close()
    import psycopg

    from .storage.postgres import conn_kwargs, detect_features

    if not s.dsn:
        raise ValueError('storage.dsn: required when storage.backend = "postgres"')

    with psycopg.connect(s.dsn, **conn_kwargs(s.pg_schema)) as conn:
        states = migrate.status(conn, "postgres")
        features, _ = detect_features(conn)
        return states, features


def _cmd_db_status(args) -> int:
    s = _load(args)
    try:
        states, features = _status(s)
    except Exception as e:  # noqa: BLE001 - any failure to reach the database is reported as such
        return _fail(f"db status: cannot read {_where(s)}: {e}")
    print(f"{s.backend}: {_where(s)}")
    pending = 0
    for m in states or []:
        state = "pending" if m.applied_at is None else ("applied" if m.done else "skipped")
        pending += m.applied_at is None
        print(f"  {m.version:04d} {m.name:<12} {state:<8} {_when(m.applied_at)}  {m.report}")
    for k, v in features.items():
        print(f"  {k}: {v}")
    if states is None or pending:
        print("  -> run `kefu db upgrade`")
        return 1
    return 0


# ------------------------------------------------------------------ keys


def _with_keys(args, fn):
    """Open the store (no background tasks) with the keyring and run ``fn(store)``."""
    from .storage import StorageUnavailable, open_store
    from .storage.crypto import CryptoError, KeyringError, load_master_key

    s = _load(args)
    try:
        master = load_master_key(s.master_key_file, s.master_key_env)
    except KeyringError as e:
        return _fail(str(e), 2)

    async def run():
        async with open_store(s, master=master, background=False) as store:
            return await fn(store)

    try:
        return trio.run(run)
    except (StorageUnavailable, KeyringError, CryptoError, ValueError) as e:
        return _fail(str(e))


def _cmd_keys_new_master(args) -> int:
    from .storage.crypto import write_master_key

    try:
        mk = write_master_key(args.file)
    except FileExistsError:
        return _fail(f"{args.file} exists; kefu never overwrites a master key", 2)
    except OSError as e:
        return _fail(f"cannot write {args.file}: {e.strerror}", 2)
    print(f"wrote {args.file} (mode 600), fingerprint {mk.fingerprint}")
    print("Set storage.master_key_file to this path, or export its content in storage.master_key_env.")
    print("Back it up apart from the database: without it, encrypted data cannot be read.")
    return 0


def _cmd_keys_new_device(args) -> int:
    from .storage.crypto import key_id_text

    async def fn(store):
        rec, key = await store.keys.new_device(args.device, replace=args.replace)
        print(f"device {args.device}: key id {key_id_text(rec.key_id)}")
        print(f"key {key.hex()}")
        print("Provision this key on the device now; kefu stores it only wrapped and never shows it again.")
        print("Envelope: docs/sm4-envelope.md; reference device: examples/sm4_device.py")
        return 0

    return _with_keys(args, fn)


def _cmd_keys_list(args) -> int:
    from .storage.crypto import key_id_text

    async def fn(store):
        recs = sorted(store.keys.keyring.records.values(), key=lambda r: (r.purpose, r.created_at))
        print(f"master key {store.keys.keyring.master.fingerprint}")
        print(f"{'KEY ID':>10}  {'PURPOSE':<7} {'STATE':<9} {'CREATED':<19}  DEVICE / USES")
        for r in recs:
            extra = r.device_id if r.purpose == "device" else f"{await store.count_key_uses(r.key_id)} rows"
            print(f"{key_id_text(r.key_id):>10}  {r.purpose:<7} {r.state:<9} {_when(r.created_at)}  {extra}")
        if not recs:
            print("(no keys yet: `kefu keys new-device ID`, or `kefu keys rotate` for a data key)")
        return 0

    return _with_keys(args, fn)


def _cmd_keys_revoke(args) -> int:
    from .storage.crypto import key_id_text, parse_key_id

    async def fn(store):
        kr = store.keys.keyring
        n = parse_key_id(args.id)  # as printed (0x1234abcd) or decimal
        by_id = n if n is not None and n in kr.records else None
        by_device = kr.device_key_id(args.id)
        if by_id is not None and by_device is not None and by_id != by_device:
            return _fail(f"{args.id!r} is both a key id and a device id; revoke key {key_id_text(by_device)} by its key id", 2)
        kid = by_id if by_id is not None else by_device
        if kid is None:
            return _fail(f"no key id or device with an active key named {args.id!r} (see `kefu keys list`)", 2)
        rec = await store.keys.revoke(kid)
        who = f" of device {rec.device_id}" if rec.device_id else ""
        print(f"revoked key {key_id_text(kid)}{who}; running kefu nodes stop accepting it within {store.keys.refresh_s:g} s")
        return 0

    return _with_keys(args, fn)


def _cmd_keys_rotate(args) -> int:
    from .storage.crypto import key_id_text

    async def fn(store):
        rec = await store.keys.rotate()
        print(f"new data key {key_id_text(rec.key_id)} is active; previous data keys are retiring")
        if args.no_wait:
            print("a running kefu re-encrypts the remaining rows in the background")
            return 0

        def progress(kid, total):
            print(f"\r  re-encrypting rows of key {key_id_text(kid)}: {total}", end="", flush=True)

        total = await store.keys.rekey(progress)
        print(f"\nre-encrypted {total} rows; retired keys: "
              + (", ".join(key_id_text(r.key_id) for r in store.keys.keyring.records.values() if r.state == "retired") or "none"))
        return 0

    return _with_keys(args, fn)


# ------------------------------------------------------------------ search


def _cmd_search(args) -> int:
    from .storage import SearchUnavailable, StorageUnavailable, master_key_configured, open_store

    s = _load(args)

    async def run():
        async with open_store(s, background=False) as store:
            return await store.search(args.text, limit=args.limit, conversation_id=args.conversation)

    try:
        hits = trio.run(run)
    except (SearchUnavailable, StorageUnavailable) as e:
        return _fail(str(e))
    except Exception as e:  # noqa: BLE001 - e.g. KeyringError: say what and where
        hint = "" if master_key_configured(s) else " (encrypted rows need the master key)"
        return _fail(f"search: {e}{hint}")
    for h in hits:
        print(f"{_when(h.created_at)}  {h.conversation_id}  #{h.message_id} {h.sender_kind}: {h.snippet}")
    print(f"({len(hits)} match{'es' if len(hits) != 1 else ''})", file=sys.stderr)
    return 0 if hits else 1


# ------------------------------------------------------------------ registration


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file whose [storage] section names the database")


def register(sub) -> None:
    db = sub.add_parser("db", help="database schema: upgrade, status",
                        description="Schema migrations of the configured database ([storage] in the config).")
    dsub = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    p = dsub.add_parser("upgrade", help="apply pending migrations",
                        description="Apply pending migrations, each in its own transaction, and report what the "
                        "server offers (TimescaleDB, pg_trgm). Optional steps skipped now are retried next time.")
    _config_arg(p)
    p.set_defaults(func=_cmd_db_upgrade)
    p = dsub.add_parser("status", help="show migrations and detected features",
                        description="List every migration (applied, skipped, pending) and the detected features; "
                        "exit 1 when migrations are pending.")
    _config_arg(p)
    p.set_defaults(func=_cmd_db_status)

    keys = sub.add_parser("keys", help="SM4 keys: new-master, new-device, list, revoke, rotate",
                          description="SM4 key management. Keys are stored wrapped by the master key, which comes "
                          "from storage.master_key_env or storage.master_key_file, never from the config itself.")
    ksub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    p = ksub.add_parser("new-master", help="create a master key file",
                        description="Write a new random master key to FILE (mode 600). Refuses to overwrite.")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=_cmd_keys_new_master)
    p = ksub.add_parser("new-device", help="create a device key and print it once",
                        description="Create an SM4 key for device ID (its MQTT client id) and print it once, "
                        "for provisioning.")
    p.add_argument("device", metavar="ID")
    p.add_argument("--replace", action="store_true", help="revoke the device's current key and issue a new one")
    _config_arg(p)
    p.set_defaults(func=_cmd_keys_new_device)
    p = ksub.add_parser("list", help="list keys", description="List keys: id, purpose, state, device or rows using it.")
    _config_arg(p)
    p.set_defaults(func=_cmd_keys_list)
    p = ksub.add_parser("revoke", help="revoke a key (by key id or device id)",
                        description="Revoke a device key (by key id or device id): envelopes under it are rejected.")
    p.add_argument("id", metavar="ID")
    _config_arg(p)
    p.set_defaults(func=_cmd_keys_revoke)
    p = ksub.add_parser("rotate", help="new data key; re-encrypt stored data",
                        description="Make a new data key active and re-encrypt rows sealed with older keys, in small "
                        "batches beside normal traffic, then retire the old keys.")
    p.add_argument("--no-wait", action="store_true", help="leave the re-encryption to the running kefu")
    _config_arg(p)
    p.set_defaults(func=_cmd_keys_rotate)

    p = sub.add_parser("search", help="search transcripts",
                       description="Case-insensitive substring search over transcripts (Chinese and English); "
                       "words separated by spaces must all occur. Newest first; exit 1 when nothing matches.")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--limit", type=int, default=20, help="most matches shown (default 20)")
    p.add_argument("--conversation", metavar="ID", help="only this conversation")
    _config_arg(p)
    p.set_defaults(func=_cmd_search)
