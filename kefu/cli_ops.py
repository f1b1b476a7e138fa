"""`kefu status`, `kefu stats`, `kefu agents add|list`, `kefu devices add|list`: the operator's shell view.

* ``status`` asks the running node (GET /ops/status on listeners.http, the address the
  config names) what runs, where it listens, which storage (TimescaleDB active or not),
  connections, queues, agents and firing alerts. No node there: one line saying so.
* ``stats`` reads the stored metric history straight from the database ([storage]), so
  it works with the node stopped: one table row per series and label set (last, average,
  min, max over the range, and a sparkline of the trend).
* ``agents add`` appends an ``[[agents]]`` table (and, with ``--token``, an agent API
  token) to the config file after checking the result loads; ``agents list`` shows the
  configured agents with their live status when a node answers.
* ``devices add|list``: SM4 device keys through the storage keyring (the same code as
  `kefu keys new-device`), listed with their MQTT session state.

Exit status: 0 ok, 1 the operation failed (no node, database unavailable), 2 bad usage
or configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request

from .cli_storage import _config, _fail

SPARK = "▁▂▃▄▅▆▇█"
SINCE_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
DEFAULT_STATS = (
    "messages_in_per_s", "messages_out_per_s", "mqtt_messages_in_per_s", "message_latency_p50_seconds",
    "message_latency_p99_seconds", "connections", "queue_length", "queue_wait_seconds", "first_response_avg_seconds",
    "handle_time_avg_seconds", "resolution_time_avg_seconds", "bot_containment_ratio", "bot_handoff_ratio",
    "intents_per_s", "intent_confidence_avg", "intent_latency_p95_seconds", "csat_avg", "sla_breaches_per_s",
    "agents", "agent_occupancy_ratio", "rejected_per_s", "storage_write_p99_seconds",
)


def parse_since(text: str) -> float:
    """'90s', '15m', '1h', '7d' -> seconds."""
    t = text.strip().lower()
    for unit in sorted(SINCE_UNITS, key=len, reverse=True):
        if t.endswith(unit):
            num = t[: -len(unit)]
            try:
                v = float(num)
            except ValueError:
                break
            if v > 0:
                return v * SINCE_UNITS[unit]
            break
    raise ValueError(f"--since: expected a duration like 15m, 1h, 24h or 7d, got {text!r}")


def node_url(cfg, override: str | None = None) -> str:
    """Base URL of the node's HTTP listener, from the config (or --url)."""
    if override:
        return override.rstrip("/")
    lc = cfg.listeners.http
    if not lc.enabled:
        raise LookupError("listeners.http.enabled is false in the config, and `kefu status` reads the node through "
                          "its HTTP listener (which also serves /metrics and /dashboard); enable it, or pass --url")
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(lc.host, lc.host)
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if lc.certfile and lc.keyfile else "http"
    return f"{scheme}://{host}:{lc.port}"


def fetch(url: str, token: str | None, timeout: float = 5.0) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("message", "")
        except ValueError:
            msg = ""
        raise ConnectionError(f"{url}: HTTP {e.code} {msg}".rstrip()) from None
    except urllib.error.URLError as e:
        why = getattr(e.reason, "strerror", None) or str(e.reason)
        raise ConnectionError(f"no kefu node answers at {url.rsplit('/ops/', 1)[0]} ({why}); is `kefu serve` "
                              "running with this config?") from None
    except (TimeoutError, OSError) as e:
        raise ConnectionError(f"no answer from {url} ({e})") from None


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def table(headers: list[str], rows: list[list], indent: str = "  ") -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    right = [all(_numeric(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(vals):
        return indent + "  ".join(v.rjust(w) if right[i] else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths))).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in cells])


def _numeric(s: str) -> bool:
    s = s.replace("%", "").replace(" ms", "").replace(" s", "").replace("k", "").replace("M", "").strip()
    try:
        float(s)
        return True
    except ValueError:
        return s == "-"


# ------------------------------------------------------------------ status


def render_status(st: dict) -> str:
    out = [f"kefu {st['version']} on {st['node']}, pid {st['pid']}, up {_dur(st['uptime_s'])}"]
    out.append("")
    out.append("Listening")
    out.append(table(["LISTENER", "ADDRESS"], [[x["name"], x["url"]] for x in st["listeners"]]))
    if st.get("metrics_url"):
        out.append(f"  metrics   {st['metrics_url']}    dashboard {st['metrics_url'][:-len('/metrics')]}/dashboard")
    s = st["storage"]
    out.append("")
    line = f"Storage     {s['backend']}"
    if s.get("where"):
        line += f" at {s['where']}"
    out.append(line)
    if "ready" in s:
        out.append(f"  ready       {'yes' if s['ready'] else 'NO: ' + s.get('reason', '')}"
                   + (f" ({s['pending']} writes pending)" if s.get("pending") else ""))
    if s["backend"] == "postgres":
        feat = (s.get("features") or {}).get("timescaledb", "")
        out.append(f"  TimescaleDB {s.get('timescaledb', '?')}" + (f" ({feat})" if feat else ""))
    out.append(f"  roll-ups    {s.get('rollups', 'off')}")
    out.append("")
    conns = st.get("connections") or {}
    out.append(f"Connections {sum(conns.values())}")
    if conns:
        out.append(table(["CHANNEL", "PROTOCOL", "OPEN"], [k.split("/", 1) + [v] for k, v in conns.items()]))
    out.append("")
    if not st.get("desk"):
        out.append("Desk        not running (no queues or agents)")
    else:
        q = st.get("queues") or {}
        out.append(f"Queues      {sum(v['waiting'] for v in q.values())} waiting")
        if q:
            out.append(table(["TEAM", "WAITING", "LONGEST WAIT"],
                             [[t or "(none)", v["waiting"], _dur(v["oldest_wait_s"]) if v["waiting"] else "-"]
                              for t, v in q.items()]))
        a = st.get("agents") or {}
        occ = st.get("occupancy")
        out.append("")
        out.append(f"Agents      {a.get('online', 0)} online, {a.get('away', 0)} away, {a.get('offline', 0)} offline"
                   + (f"; occupancy {occ * 100:.0f}%" if occ is not None else ""))
    rej = {k: v for k, v in (st.get("rejected") or {}).items() if v}
    out.append("")
    out.append("Rejected    " + (", ".join(f"{k} {v}" for k, v in rej.items()) if rej else "none"))
    firing = st.get("alerts_firing") or []
    out.append("Alerts      " + ("none firing" if not firing else f"{len(firing)} FIRING"))
    for f in firing:
        labels = ",".join(f"{k}={v}" for k, v in f["labels"].items())
        out.append(f"  {f['alert']}: {f['metric']}{{{labels}}} = {f['value']:g} ({f['op']} {f['threshold']:g})")
    return "\n".join(out)


def _cmd_status(args) -> int:
    cfg = _config(args)
    try:
        url = node_url(cfg, args.url)
    except LookupError as e:
        return _fail(str(e), 2)
    try:
        st = fetch(url + "/ops/status", args.token or os.environ.get("KEFU_TOKEN"))
    except ConnectionError as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print(render_status(st))
    return 0


# ------------------------------------------------------------------ stats


def _fmt(v: float | None, unit: str, name: str = "") -> str:
    if v is None:
        return "-"
    if unit == "s":
        return _dur(v)
    if name.endswith("_ratio"):
        return f"{v * 100:.1f}%"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.1f}M"
    if a >= 1e4:
        return f"{v / 1e3:.1f}k"
    return f"{v:.2f}" if a < 100 else f"{v:.0f}"


def spark(values: list[float], width: int = 24) -> str:
    if not values:
        return ""
    if len(values) > width:  # average down to ``width`` cells
        k = len(values) / width
        values = [sum(values[int(i * k):max(int((i + 1) * k), int(i * k) + 1)]) /
                  len(values[int(i * k):max(int((i + 1) * k), int(i * k) + 1)]) for i in range(width)]
    lo, hi = min(values), max(values)
    if hi == lo:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / (hi - lo) * len(SPARK)))] for v in values)


def render_stats(data: dict, since: str) -> str:
    rows = []
    for name, series in data["series"].items():
        unit = data["units"].get(name, "")
        for s in series:
            pts = s["points"]
            if not pts:
                continue
            vals = [p[1] for p in pts]
            labels = ",".join(f"{k}={v}" for k, v in s["labels"].items())
            rows.append([name, labels or "-", _fmt(vals[-1], unit, name), _fmt(sum(vals) / len(vals), unit, name),
                         _fmt(min(p[2] for p in pts), unit, name), _fmt(max(p[3] for p in pts), unit, name),
                         spark(vals)])
    head = f"kefu stats, last {since} ({data['step']} s buckets, {data['source']})"
    if not rows:
        return head + "\n  no samples stored in this range (is kefu running with metrics.history = true?)"
    return head + "\n" + table(["SERIES", "LABELS", "LAST", "AVG", "MIN", "MAX", "TREND"], rows)


def _cmd_stats(args) -> int:
    import trio

    from .ops import query_history
    from .storage import StorageUnavailable, open_store
    from .timeseries import RATIOS, SERIES_BY_NAME, History

    cfg = _config(args)
    try:
        since = parse_since(args.since)
    except ValueError as e:
        return _fail(str(e), 2)
    names = [n for n in (args.series.split(",") if args.series else DEFAULT_STATS) if n]
    bad = [n for n in names if n not in SERIES_BY_NAME and n not in RATIOS]
    if bad:
        return _fail(f"--series: unknown {', '.join(bad)}; known: {', '.join(sorted([*SERIES_BY_NAME, *RATIOS]))}", 2)

    async def run():
        async with open_store(cfg.storage, upgrade=False, background=False) as store:
            hist = History(store, rollup_retention_days=cfg.metrics.rollup_retention_days)
            return await query_history(hist, names, since, cfg.metrics.sample_interval, end=time.time())

    try:
        data = trio.run(run)
    except (StorageUnavailable, ValueError, OSError) as e:
        return _fail(f"stats: cannot read the metric history: {e}")
    except Exception as e:  # noqa: BLE001 - e.g. no roll-up table yet on a database kefu never sampled into
        if "metric_rollups_1m" in str(e) or "no such table" in str(e):
            return _fail("stats: no metric history in this database yet (kefu has not sampled into it)")
        raise
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(render_stats(data, args.since))
    return 0


# ------------------------------------------------------------------ agents


def _cmd_agents_add(args) -> int:
    import tomllib

    from .config import ConfigError, from_dict
    from .config.reference import _toml_value

    path = args.config
    if not path:
        return _fail("agents add: --config FILE is required (the agent is added to that file)", 2)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        return _fail(f"agents add: cannot read {path}: {e.strerror}", 2)
    try:
        cfg = from_dict(tomllib.loads(text), path)
    except (tomllib.TOMLDecodeError, ConfigError) as e:
        return _fail(f"agents add: {path} is not a valid config now; fix it first:\n{e}", 2)
    if any(a.id == args.id for a in cfg.agents):
        return _fail(f"agents add: agent {args.id!r} is already in {path}", 2)
    teams = [t for t in (args.teams or "").split(",") if t]
    skills = [s for s in (args.skills or "").split(",") if s]
    block = ["", "[[agents]]", f"id = {_toml_value(args.id)}", f"name = {_toml_value(args.name or args.id)}",
             f"teams = {_toml_value(teams)}", f"skills = {_toml_value(skills)}", f"capacity = {args.capacity}",
             f"tier = {args.tier}"]
    token = None
    if args.token:
        from .bridge.identity import new_token, sha256_hex

        token = new_token()
        block += ["", "[[api.tokens]]", f"name = {_toml_value(args.id)}", f"token_sha256 = {_toml_value(sha256_hex(token))}",
                  'role = "agent"', f"agent = {_toml_value(args.id)}"]
    new_text = text.rstrip("\n") + "\n" + "\n".join(block) + "\n"
    try:
        new_cfg = from_dict(tomllib.loads(new_text), path)
    except tomllib.TOMLDecodeError as e:
        return _fail(f"agents add: appending [[agents]] to {path} would not be valid TOML ({e}); "
                     "the file probably lists agents inline: add the entry by hand", 2)
    except ConfigError as e:
        return _fail(f"agents add: the new entry is not valid:\n{e}", 2)
    known = {t.id for t in new_cfg.teams}
    unknown = [t for t in teams if known and t not in known]
    if unknown:
        return _fail(f"agents add: unknown team(s) {', '.join(unknown)}; [[teams]] in {path}: {', '.join(sorted(known))}", 2)
    tmp = path + ".kefu-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(new_text)
    os.replace(tmp, path)
    print(f"added agent {args.id} to {path} (teams {', '.join(teams) or 'none'}, capacity {args.capacity})")
    if token:
        print(f"API/console token for {args.id} (shown once, only its SHA-256 is in the file): {token}")
    print("It takes effect when kefu is next started with this config.")
    return 0


def _cmd_agents_list(args) -> int:
    cfg = _config(args)
    live, note = {}, ""
    try:
        st = fetch(node_url(cfg, args.url) + "/ops/status", args.token or os.environ.get("KEFU_TOKEN"))
        live = st.get("agent_roster") or {}
    except (LookupError, ConnectionError) as e:
        note = f"(live status unknown: {e})"
    rows = []
    for a in cfg.agents:
        r = live.get(a.id)
        rows.append([a.id, a.name or a.id, ",".join(a.teams) or "-", ",".join(a.skills) or "-", a.capacity, a.tier,
                     r["status"] if r else "-", f"{r['load']}/{r['capacity']}" if r else "-"])
    if not rows:
        print(f"no agents in {args.config or 'the default config'} (add one: kefu agents add ID --config FILE)")
        return 0
    print(table(["ID", "NAME", "TEAMS", "SKILLS", "CAPACITY", "TIER", "STATUS", "LOAD"], rows, indent=""))
    if note:
        print(note)
    return 0


# ------------------------------------------------------------------ devices


def _cmd_devices_add(args) -> int:
    from .cli_storage import _cmd_keys_new_device

    return _cmd_keys_new_device(argparse.Namespace(config=args.config, device=args.id, replace=args.replace))


def _cmd_devices_list(args) -> int:
    from .cli_storage import _when, _with_keys
    from .storage.crypto import key_id_text

    async def fn(store):
        kr = store.keys.keyring
        sessions = {s.client_id: s for s in await store.load_sessions()}
        recs = sorted((r for r in kr.records.values() if r.purpose == "device"), key=lambda r: (r.device_id, r.created_at))
        rows = []
        for r in recs:
            if r.state == "revoked" and not args.all:
                continue
            s = sessions.get(r.device_id)
            sess = "-" if s is None else ("connected" if s.connected else f"away since {_when(s.disconnected_at)}")
            rows.append([r.device_id, key_id_text(r.key_id), r.state, _when(r.created_at), sess])
        if not rows:
            print("no devices with SM4 keys (add one: kefu devices add ID --config FILE)")
            return 0
        print(table(["DEVICE", "KEY ID", "STATE", "CREATED", "MQTT SESSION"], rows, indent=""))
        return 0

    return _with_keys(args, fn)


# ------------------------------------------------------------------ parser


def register(sub) -> None:
    def common(p, node: bool = False):
        p.add_argument("--config", "-c", metavar="FILE", help="the config file `kefu serve` uses")
        if node:
            p.add_argument("--url", help="base URL of the node's HTTP listener (default: from listeners.http)")
            p.add_argument("--token", help="operator API token when metrics.access = operator (or $KEFU_TOKEN)")

    p = sub.add_parser("status", help="what the running node serves, its storage, connections and queues",
                       description="Ask the running kefu node (GET /ops/status on listeners.http) what runs, where it "
                       "listens, which storage it uses and whether TimescaleDB is active, its connections, queues, "
                       "agents and firing alerts. Exit status 1 when no node answers.")
    common(p, node=True)
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("stats", help="tables of the stored metric history",
                       description="Read the stored metric history from the database in [storage] (no running node "
                       "needed) and print, per series and label set, the last value, average, minimum, maximum and "
                       "trend over the range. Series: docs/metrics.md.")
    common(p)
    p.add_argument("--since", default="1h", help="range to the present: 15m, 1h, 24h, 7d, ... (default 1h)")
    p.add_argument("--series", help="comma-separated series names (default: the main ones)")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=_cmd_stats)

    ag = sub.add_parser("agents", help="agents: add, list", description="Agent administration.")
    asub = ag.add_subparsers(dest="agents_command", metavar="COMMAND", required=True)
    p = asub.add_parser("add", help="add an [[agents]] entry to the config file",
                        description="Append an [[agents]] table to the config file (checked before writing). With "
                        "--token also an [[api.tokens]] entry for the agent; the token is printed once.")
    p.add_argument("id", metavar="ID")
    common(p)
    p.add_argument("--name", help="display name (default: the id)")
    p.add_argument("--teams", help="comma-separated [[teams]] ids")
    p.add_argument("--skills", help="comma-separated skills")
    p.add_argument("--capacity", type=int, default=5, help="conversations at once (default 5)")
    p.add_argument("--tier", type=int, default=0, help="VIP tier (default 0)")
    p.add_argument("--token", action="store_true", help="also make an API/console token for the agent")
    p.set_defaults(func=_cmd_agents_add)
    p = asub.add_parser("list", help="configured agents, with live status when a node answers",
                        description="List the configured agents; with a running node also status and load.")
    common(p, node=True)
    p.set_defaults(func=_cmd_agents_list)

    dv = sub.add_parser("devices", help="devices and their SM4 keys: add, list", description="Device administration.")
    dsub = dv.add_subparsers(dest="devices_command", metavar="COMMAND", required=True)
    p = dsub.add_parser("add", help="create a device's SM4 key and print it once",
                        description="Create an SM4 key for device ID (its MQTT client id) and print it once (the "
                        "same as `kefu keys new-device`). Needs the master key (storage.master_key_env or _file).")
    p.add_argument("id", metavar="ID")
    common(p)
    p.add_argument("--replace", action="store_true", help="replace (and revoke) the device's active key")
    p.set_defaults(func=_cmd_devices_add)
    p = dsub.add_parser("list", help="devices with SM4 keys and their MQTT session",
                        description="List devices with SM4 keys: key id, state, creation time, persistent MQTT session.")
    common(p)
    p.add_argument("--all", action="store_true", help="include revoked keys")
    p.set_defaults(func=_cmd_devices_list)
