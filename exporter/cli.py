"""The `bem-exporter` command line.

Each flag is a row of the settings table (`exporter.config.table`) and maps onto its
environment name, so precedence (flag > environment > config file > default) is decided in one
place, `exporter.config.load_settings`. There is no flag for the API key itself: command lines
are visible to every user of the machine (`ps`); use `BEM_API_KEY`, `--api-key-file` or the
config file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Sequence

from exporter import __version__, logs
from exporter.config import Settings, SettingsError, load_settings, parse_duration
from exporter.config.table import CALL_BUCKETS, ROWS, SECTIONS, Row
from exporter.slo.model import FORMATS
from exporter.slo.windows import PERIODS
from exporter.state import StateError

DESCRIPTION = """\
Polls bem's Calls API (bem.ai) and turns workflow calls into OpenTelemetry traces
(one per finished call, one span per function call) and Prometheus metrics.

Start here:  bem-exporter demo     (no API key needed: a simulated bem, live metrics)
"""

SETTINGS_EPILOG = """\
Settings come from flags, then environment variables (BEM_*, OTEL_*), then --config FILE
(TOML), then defaults; each flag's help names its environment variable and default.
OTEL_* variables are read from the environment only. Full list: docs/configuration.md.
"""
KEY_EPILOG = """\
The API key comes from BEM_API_KEY, BEM_API_KEY_FILE (--api-key-file), or the config file's
api_key or api_key_file; there is no flag for the key itself, as every user of the machine
sees command lines.
"""
EPILOGS = {
    "run": SETTINGS_EPILOG + KEY_EPILOG,
    "once": SETTINGS_EPILOG + KEY_EPILOG,
    "check": SETTINGS_EPILOG + KEY_EPILOG,
    "demo": SETTINGS_EPILOG + "The demo runs against its own simulator: it needs no API URL and no key.\n",
    "simulate": "The simulator accepts the key given by --api-key (sim-key unless told).\n",
    "subscribe": SETTINGS_EPILOG + KEY_EPILOG + "Setting it up: docs/webhooks.md.\n",
    "slo-rules": "Without flags: an availability SLO of 99% over all workflows, which is what\n"
    "prometheus/rules/bem-slo.yaml ships. A --config file replaces the SLO flags. See docs/slo.md.\n",
}

CONFIG_HELP = "TOML file of settings (keys: docs/configuration.md; default none)"

# A demo runs against its own simulator: it takes neither an API URL nor a key.
_NOT_IN_DEMO = frozenset({"BEM_API_URL", "BEM_API_KEY_FILE"})
# `subscribe` talks to the API and says what it did: nothing else applies to it.
_SUBSCRIBE_SECTIONS = frozenset({"api", "logs"})


def _takes(command: str, row: Row) -> bool:
    if command == "demo":
        return row.env not in _NOT_IN_DEMO
    return command != "subscribe" or row.section in _SUBSCRIBE_SECTIONS


def _flag_rows(command: str) -> list[tuple[str, Row]]:
    """(flag, row) of every setting `command` takes as a flag."""
    return [(row.flag_name, row) for row in ROWS if row.flag_name and _takes(command, row)]


def _flag_help(row: Row) -> str:
    default = row.default_text.replace("`", "") or "none"
    if not default.startswith("required"):
        default = f"default {default}"
    return f"{row.help.replace('`', '')} ({row.env}; {default})".replace("%", "%%")


_FORMATTER = argparse.RawDescriptionHelpFormatter


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit 2, like every other settings error.
        self.exit(2, f"bem-exporter: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bem-exporter",
        description=DESCRIPTION,
        epilog=SETTINGS_EPILOG + KEY_EPILOG,
        formatter_class=_FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"bem-exporter {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    helps = {
        "run": "poll bem and serve /metrics until stopped (SIGTERM/SIGINT stop gracefully)",
        "once": "one full poll cycle, print a summary, exit 0 (or 1 on failure)",
        "demo": "run against a built-in simulated bem API with live traffic; no API key needed",
        "simulate": "run only the bem API simulator (for compose, tests and benchmarks)",
        "check": "validate the settings and reach the API and the OTLP endpoint",
        "subscribe": "create the webhook subscriptions the exporter needs (dry run unless --apply)",
        "slo-rules": "print Prometheus rules for SLOs with multi-window, multi-burn-rate alerts (Sloth's shape)",
    }
    for name, text in helps.items():
        command = commands.add_parser(
            name, help=text, description=text, epilog=EPILOGS[name], formatter_class=_FORMATTER
        )
        if name == "simulate":
            _simulator_flags(command)
            continue
        if name == "slo-rules":
            _slo_flags(command)
            continue
        command.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
        _setting_flags(command, name)
        if name == "subscribe":
            hooks = command.add_argument_group("Subscriptions")
            hooks.add_argument("--url", required=True, help="the exporter's webhook URL, as bem will call it")
            hooks.add_argument("--apply", action="store_true", help="create the missing ones (default: only show them)")
        if name == "demo":
            demo = command.add_argument_group("Demo")
            demo.add_argument("--rate", type=float, default=1.0, help="simulated new calls per second (default 1)")
            demo.add_argument("--prefill", type=int, default=200, help="calls already in the history (default 200)")
    return parser


def _setting_flags(command: argparse.ArgumentParser, name: str) -> None:
    groups = {section: command.add_argument_group(title) for section, title in SECTIONS.items()}
    for flag, row in _flag_rows(name):
        groups[row.section].add_argument(flag, dest=row.env, metavar=row.metavar, help=_flag_help(row))


def _simulator_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--listen", default="127.0.0.1:8787", help="host:port to serve on (default 127.0.0.1:8787)")
    command.add_argument("--seed", type=int, default=1, help="workload seed (default 1)")
    command.add_argument("--rate", type=float, default=1.0, help="new calls per second (default 1)")
    command.add_argument("--prefill", type=int, default=0, help="calls created in the past before start (default 0)")
    command.add_argument("--history", default="1h", help="how far back prefilled calls start (default 1h)")
    command.add_argument("--speed", type=float, default=1.0, help="workload time multiplier (default 1)")
    command.add_argument("--latency", type=float, default=0.0, help="seconds added to every response (default 0)")
    command.add_argument("--failure-rate", type=float, default=0.15, help="share of calls that fail (default 0.15)")
    command.add_argument("--api-key", default="sim-key", help="the key the simulator accepts (default sim-key)")
    command.add_argument("--no-auth", action="store_true", help="accept requests without a key (default: key required)")
    command.add_argument(
        "--canary-outcome",
        choices=("normal", "fail", "hang"),
        default="normal",
        help="what becomes of canary calls (reference bem-exporter-canary-*): normal, fail, hang (default normal)",
    )
    command.add_argument(
        "--canary-reject",
        type=int,
        metavar="STATUS",
        help="answer canary create requests with this HTTP status (default: accept them)",
    )
    command.add_argument(
        "--rate-limit", type=float, metavar="RPS", help="requests per second each API key may make (default: no limit)"
    )
    command.add_argument(
        "--rate-limit-burst", type=float, default=1.0, metavar="N", help="requests allowed at once (default 1)"
    )
    command.add_argument(
        "--quality-drift",
        action="append",
        default=[],
        metavar="FUNCTION:PER_HOUR",
        help="make a function's accuracy (GET /v3/functions/metrics) fall by PER_HOUR each hour, e.g. "
        "extract-invoice:0.6 (repeatable; default: steady)",
    )
    command.add_argument(
        "--no-retry-after", action="store_true", help="answer rate-limit 429s without Retry-After (default: with)"
    )
    _webhook_flags(command)


def _webhook_flags(command: argparse.ArgumentParser) -> None:
    """One flag per knob of `exporter.simulator.config.Webhooks`: `--webhook-<knob>`. The
    simulator itself is imported only by `simulate`: every command builds this parser, and the
    simulator's package brings aiohttp's server, which `once` and `check` do not need."""
    add = command.add_argument_group("Webhooks (delivered to the URLs of /v3/subscriptions)").add_argument
    add("--webhook-secret", help="the account's signing secret (default: the demo's)")
    add("--no-webhook-secret", action="store_true", help="deliver unsigned, as bem does with no secret")
    rates = {
        "drop": "share of deliveries never made",
        "duplicate": "share of deliveries made twice",
        "reorder": "share of deliveries held back up to --webhook-reorder-window",
        "wrong-secret": "share of attempts signed with another secret",
        "stale": "share of attempts whose signature is dated --webhook-stale-seconds ago",
    }
    for name, text in rates.items():
        add(f"--webhook-{name}-rate", type=float, default=0.0, metavar="SHARE", help=f"{text} (default 0)")
    seconds = {
        "delay": ("every delivery waits this long", 0.0),
        "reorder-window": ("the longest hold of a reordered delivery", 2.0),
        "stale-seconds": ("how old a stale signature is", 600.0),
        "retry-base": ("wait before the first retry of a failed attempt; doubled each time", 1.0),
    }
    for name, (text, default) in seconds.items():
        add(f"--webhook-{name}", type=float, default=default, metavar="SECONDS", help=f"{text} (default {default:g})")
    add(
        "--webhook-final-event-lead",
        type=float,
        metavar="SECONDS",
        help="deliver a call's last event at most this long before the call reads finished "
        "(default: when created, 0.02-0.4 s before, as bem can)",
    )
    add("--webhook-max-attempts", type=int, default=6, metavar="N", help="attempts per delivery (default 6)")


def _slo_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--objective", metavar="PERCENT", help="availability objective, e.g. 99.9 (default 99)")
    command.add_argument(
        "--workflow",
        metavar="NAME",
        action="append",
        default=[],
        help="one SLO per workflow named (repeatable; default: one SLO over all workflows)",
    )
    command.add_argument(
        "--latency",
        metavar="DURATION:PERCENT",
        action="append",
        default=[],
        help="latency SLO: PERCENT of calls finish within DURATION, a bucket boundary (e.g. 2m:95; repeatable)",
    )
    command.add_argument("--period", choices=tuple(PERIODS), help="SLO period (default 30d)")
    command.add_argument(
        "--format",
        choices=FORMATS,
        default="rules",
        help="a Prometheus rule file, or a Kubernetes PrometheusRule (default rules)",
    )
    command.add_argument("--config", metavar="FILE", help="TOML file of SLOs with their own names (docs/slo.md)")
    command.add_argument(
        CALL_BUCKETS.flag_name or "",
        dest="call_buckets",
        metavar=CALL_BUCKETS.metavar,
        help=f"the exporter's bucket bounds of call durations ({CALL_BUCKETS.env}; default {CALL_BUCKETS.default})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "slo-rules":
            from exporter.commands.slo_rules import slo_rules

            return slo_rules(args, sys.argv[1:] if argv is None else argv)
        settings = _settings(args)
        if args.command == "subscribe":
            from exporter.commands.subscribe import webhook_url

            args.url = webhook_url(args.url)
    except SettingsError as error:
        print(f"bem-exporter: error: {error}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, "text" if args.command == "demo" else settings.log_format, list(settings.secrets()))
    try:
        return asyncio.run(_command(args, settings))
    except StateError as error:
        # PostgreSQL refusing the settings is a settings error (exit 2, like every other);
        # a SQLite file that is not a state is a failure of the run (exit 1).
        return _fail(str(error), code=2 if settings.state.engine == "postgres" else 1)
    except KeyboardInterrupt:
        return 130
    except OSError as error:
        # e.g. the listen port is taken
        return _fail(f"{error.strerror or error}")


async def _command(args: argparse.Namespace, settings: Settings) -> int:
    # Imported late: `--help` and settings errors stay fast.
    if args.command == "run":
        from exporter.commands.run import run

        return await run(settings)
    if args.command == "once":
        from exporter.commands.once import once

        return await once(settings)
    if args.command == "check":
        from exporter.commands.check import check

        return await check(settings)
    if args.command == "subscribe":
        from exporter.commands.subscribe import subscribe

        return await subscribe(settings, args.url, args.apply)
    from exporter.commands.demo import demo

    return await demo(settings, args.rate, args.prefill)


def _fail(message: str, code: int = 1) -> int:
    print(f"bem-exporter: error: {message}", file=sys.stderr)
    return code


def _settings(args: argparse.Namespace) -> Settings:
    flags = {row.env: value for _, row in _flag_rows(args.command) if (value := getattr(args, row.env)) is not None}
    if args.command == "demo":
        # The demo needs no key, keeps no state and polls often so something moves.
        flags.setdefault("BEM_STATE_PATH", ":memory:")
        flags.setdefault("BEM_STATE_URL", "")
        flags.setdefault("BEM_POLL_INTERVAL", "5s")
        flags.setdefault("BEM_LOOKBACK", "1h")
    keyed = args.command in ("run", "once", "check", "subscribe")
    return load_settings(flags, config_file=args.config, require_key=keyed)


def _knob_error(error: ValueError) -> str:
    """The simulator's complaint, naming the flag of a webhook knob (`webhooks.drop_rate must
    ...` -> `--webhook-drop-rate must ...`)."""
    text = str(error)
    if not text.startswith("webhooks."):
        return text
    knob, _, rest = text.removeprefix("webhooks.").partition(" ")
    return f"--webhook-{knob.replace('_', '-')} {rest}"


def _simulate(args: argparse.Namespace) -> int:
    from exporter.simulator import DEMO_WEBHOOK_SECRET, Faults, SimulatorConfig, serve
    from exporter.simulator.config import Webhooks

    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        raise SettingsError(f"--listen: {args.listen!r} is not host:port")
    secret = DEMO_WEBHOOK_SECRET if args.webhook_secret is None else args.webhook_secret
    config = SimulatorConfig(
        seed=args.seed,
        arrival_rate=args.rate,
        prefill=args.prefill,
        history=parse_duration("--history", args.history),
        speed=args.speed,
        latency=args.latency,
        failure_rate=args.failure_rate,
        api_key=None if args.no_auth else args.api_key,
        faults=Faults(
            canary_outcome=args.canary_outcome,
            canary_reject=args.canary_reject,
            rate_limit=args.rate_limit,
            rate_limit_burst=args.rate_limit_burst,
            rate_limit_retry_after=not args.no_retry_after,
        ),
        webhooks=Webhooks(
            secret=None if args.no_webhook_secret else secret,
            drop_rate=args.webhook_drop_rate,
            duplicate_rate=args.webhook_duplicate_rate,
            delay=args.webhook_delay,
            reorder_rate=args.webhook_reorder_rate,
            reorder_window=args.webhook_reorder_window,
            wrong_secret_rate=args.webhook_wrong_secret_rate,
            stale_rate=args.webhook_stale_rate,
            stale_seconds=args.webhook_stale_seconds,
            final_event_lead=args.webhook_final_event_lead,
            max_attempts=args.webhook_max_attempts,
            retry_base=args.webhook_retry_base,
        ),
    )
    try:
        config.validate()
    except ValueError as error:
        raise SettingsError(f"simulate: {_knob_error(error)}") from None
    logs.setup("info", "auto")
    # The simulator's key is no secret: it is what a client of the simulator must send.
    accepts = f"accepting the API key {config.api_key!r}" if config.api_key else "accepting requests without a key"
    logging.getLogger("exporter").info(f"starting the bem API simulator on {host or '127.0.0.1'}:{port}, {accepts}")
    for drift in args.quality_drift:
        name, per_hour = _drift(drift)
        config.quality.start_drift(name, per_hour, time.time())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, host or "127.0.0.1", int(port)))
    return 0


def _drift(raw: str) -> tuple[str, float]:
    """A `--quality-drift` value: the function's name and the accuracy it loses per hour."""
    name, _, per_hour = raw.rpartition(":")
    try:
        value = float(per_hour)
    except ValueError:
        value = -1.0
    if not name or not 0.0 <= value < float("inf"):
        raise SettingsError(f"--quality-drift: {raw!r} is not FUNCTION:PER_HOUR (e.g. extract-invoice:0.6)")
    return name, value
