"""Config -> the desk's runtime settings, with the checks that span sections.

``config/load.py`` checks each key on its own; here the desk checks what only makes
sense together -- a routing row naming a team that does not exist, an agent in an
unknown team, an answers file that is missing or names an unknown variable -- and
reports every problem with its key path, as ``ConfigError`` (so ``kefu desk check``
and ``kefu serve`` print them the same way as the loader's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .agents import Agent
from .agents import from_config as agent_from_config
from .bot import Answers, AnswersError, BotSettings, check_template, load_answers
from .contacts import CrmSettings
from .conversations import priority_rank
from .events import WEBHOOK_EVENTS
from .hours import Hours
from .hours import from_config as hours_from_config
from .routing import Route, Router, rule_from_config
from .tickets import AlarmMapping, SlaTargets
from .topics import Topics, valid_id
from .webhooks import Endpoint, Policy

DEFAULT_SEVERITIES = {"critical": 0, "major": 1, "minor": 2, "warning": 3}


@dataclass(frozen=True)
class DeskSettings:
    topics: Topics = field(default_factory=Topics)
    router: Router = field(default_factory=lambda: Router([], Route("(default)", "general", 2, "bot")))
    teams: dict[str, str] = field(default_factory=lambda: {"general": "General"})
    agents: tuple[Agent, ...] = ()
    bot: BotSettings = field(default_factory=BotSettings)
    answers: Answers = field(default_factory=lambda: Answers({}, {}))
    sla: SlaTargets = field(default_factory=SlaTargets)
    hours: Hours | None = None
    alarms_enabled: bool = False
    alarms: AlarmMapping = field(default_factory=AlarmMapping)
    alarm_team: str = "general"
    webhooks: tuple[Endpoint, ...] = ()
    webhook_policy: Policy = field(default_factory=Policy)
    crm: CrmSettings = field(default_factory=CrmSettings)
    service_users: frozenset[str] = frozenset()
    agent_username_prefix: str = "agent:"
    accept_timeout: float = 30.0
    agent_keepalive: float = 90.0
    reopen_window: float = 86400.0
    handle_seconds: float = 300.0
    ticket_on_handoff: bool = True
    csat: bool = True
    language: str = "en"  # customers whose language is not known (kefu/i18n.py)
    csat_message: str = ""  # "": the catalogue's text in the customer's language
    queue_message: str = ""
    max_text_chars: int = 4000
    labels: frozenset[str] = frozenset()
    canned: dict[str, str] = field(default_factory=dict)


def _times(t) -> tuple[float, float, float, float]:
    return (t.urgent, t.high, t.normal, t.low)


def from_config(cfg, *, base_dir: str | Path | None = None) -> DeskSettings:
    """Build settings; raises ``ConfigError`` listing every cross-section problem."""
    from .config import ConfigError

    problems: list[str] = []

    def attempt(fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except (ValueError, AnswersError) as e:
            problems.append(str(e))
            return None

    d = cfg.desk
    prefix = d.topic_prefix
    if not prefix or any(not valid_id(p) for p in prefix.split("/")):
        problems.append("desk.topic_prefix: expected topic levels made of A-Z a-z 0-9 _ . @ : -, separated by /")

    teams: dict[str, str] = {}
    for i, t in enumerate(cfg.teams):
        if not valid_id(t.id):
            problems.append(f"teams[{i}].id: expected 1-64 characters from A-Z a-z 0-9 _ . @ : -")
        elif t.id in teams:
            problems.append(f"teams[{i}].id: {t.id!r} is defined twice")
        else:
            teams[t.id] = t.name or t.id
    if not teams:
        teams = {cfg.routing.default_team: cfg.routing.default_team}

    def team_known(where: str, team: str) -> None:
        if team not in teams:
            problems.append(f"{where}: no team {team!r}; the teams are: {', '.join(sorted(teams))}")

    r = cfg.routing
    team_known("routing.default_team", r.default_team)
    default = Route("(default)", r.default_team, priority_rank(r.default_priority), r.default_handler)
    rules = []
    for i, entry in enumerate(r.rules):
        rule = attempt(rule_from_config, entry, i)
        if rule is not None:
            team_known(f"routing.rules[{i}].team", rule.team)
            rules.append(rule)

    agents = []
    seen = set()
    for i, a in enumerate(cfg.agents):
        if a.id in seen:
            problems.append(f"agents[{i}].id: {a.id!r} is defined twice")
        seen.add(a.id)
        ag = attempt(agent_from_config, a)
        if ag is None:
            continue
        for t in ag.teams:
            team_known(f"agents[{i}].teams", t)
        agents.append(ag)

    b = cfg.bot
    bot = BotSettings(
        enabled=b.enabled,
        confidence=b.confidence,
        negative_handoff=b.negative_handoff,
        max_failed_answers=b.max_failed_answers,
        human_phrases=tuple(b.human_phrases),
        failed_phrases=tuple(b.failed_phrases),
        human_intents=tuple(b.human_intents),
        handoff_message=b.handoff_message,
        retry_prefix=b.retry_prefix,
    )
    answers = Answers({}, {})
    if b.answers_file:
        path = Path(b.answers_file)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        loaded = attempt(load_answers, path)
        if loaded is not None:
            answers = loaded

    canned: dict[str, str] = {}
    for i, c in enumerate(d.canned):
        if not c.code or not c.text:
            problems.append(f"desk.canned[{i}]: code and text are both required")
        elif c.code in canned:
            problems.append(f"desk.canned[{i}].code: {c.code!r} is defined twice")
        else:
            attempt(check_template, f"desk.canned[{i}].text", c.text, answers.variables)
            canned[c.code] = c.text

    al = cfg.alarms
    sev = {s.name.lower(): priority_rank(s.priority) for s in al.severities} or dict(DEFAULT_SEVERITIES)
    if "{device}" not in al.topic and not al.device_field:
        problems.append("alarms.topic: needs a {device} level unless alarms.device_field names the device id field")
    if al.enabled:
        team_known("alarms.team", al.team)
    mapping = AlarmMapping(
        device_field=al.device_field,
        type_field=al.type_field,
        severity_field=al.severity_field,
        state_field=al.state_field,
        message_field=al.message_field,
        recovered_values=frozenset(v.lower() for v in al.recovered_values),
        severity_priority=sev,
        default_priority=priority_rank(al.default_priority),
    )

    hooks_eps = []
    for i, w in enumerate(cfg.webhooks.endpoints):
        ep = attempt(
            lambda w=w, i=i: Endpoint(w.id or str(i), w.url, w.secret, frozenset(w.events or WEBHOOK_EVENTS))
        )
        if ep is None:
            problems[-1] = f"webhooks.endpoints[{i}]: {problems[-1]}"
        else:
            hooks_eps.append(ep)
    wh = cfg.webhooks

    hours = attempt(hours_from_config, cfg.business_hours)

    headers = {}
    for i, h in enumerate(cfg.crm.headers):
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            problems.append(f"crm.headers[{i}]: expected \"Name: value\"")
        else:
            headers[name.strip()] = value.strip()
    if cfg.crm.provider == "http" and not cfg.crm.url:
        problems.append('crm.url: required when crm.provider = "http"')

    if problems:
        raise ConfigError(problems)

    return DeskSettings(
        topics=Topics(prefix, al.topic),
        router=Router(rules, default),
        teams=teams,
        agents=tuple(agents),
        bot=bot,
        answers=answers,
        sla=SlaTargets(_times(cfg.sla.first_response), _times(cfg.sla.resolution)),
        hours=hours,
        alarms_enabled=al.enabled,
        alarms=mapping,
        alarm_team=al.team,
        webhooks=tuple(hooks_eps),
        webhook_policy=Policy(wh.queue_size, wh.max_attempts, wh.backoff, wh.backoff_max, wh.timeout),
        crm=CrmSettings(
            provider=cfg.crm.provider,
            url=cfg.crm.url,
            timeout=cfg.crm.timeout,
            cache_ttl=cfg.crm.cache_ttl,
            cache_size=cfg.crm.cache_size,
            headers=headers,
            tier_field=cfg.crm.tier_field,
        ),
        service_users=frozenset(d.service_users),
        agent_username_prefix=d.agent_username_prefix,
        accept_timeout=d.accept_timeout,
        agent_keepalive=d.agent_keepalive,
        reopen_window=d.reopen_window,
        handle_seconds=d.handle_seconds,
        ticket_on_handoff=d.ticket_on_handoff,
        csat=d.csat,
        language=d.language,
        csat_message=d.csat_message,
        queue_message=d.queue_message,
        max_text_chars=d.max_text_chars,
        labels=frozenset(d.labels),
        canned=canned,
    )


def from_file(path: str | Path) -> DeskSettings:
    """Load a config file and build the desk settings (relative paths are relative to the file)."""
    from .config import load

    return from_config(load(path), base_dir=Path(path).resolve().parent)
