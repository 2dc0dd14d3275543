"""The `bem-exporter` command line.

Flags map onto the settings' environment names, so precedence (flag > environment > config
file > default) is decided in one place, `exporter.config.load_settings`. There is no flag for
the API key itself: command lines are visible to every user of the machine (`ps`); use
`BEM_API_KEY` or `--api-key-file`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from exporter import __version__, logs
from exporter.config import DEFAULT_LISTEN_PORT, Settings, SettingsError, load_settings, parse_duration
from exporter.state import StateError

DESCRIPTION = """\
Polls bem's Calls API (bem.ai) and turns workflow calls into OpenTelemetry traces
(one per finished call, one span per function call) and Prometheus metrics.

Start here:  bem-exporter demo     (no API key needed: a simulated bem, live metrics)
"""

EPILOG = """\
Settings come from flags, then environment variables (BEM_*, OTEL_*), then --config FILE
(TOML), then defaults. The API key is read from BEM_API_KEY or BEM_API_KEY_FILE only.
Full list: docs/configuration.md.
"""

# flag -> (environment name, help)
_COMMON_FLAGS: dict[str, tuple[str, str]] = {
    "--api-url": ("BEM_API_URL", "bem API base URL (BEM_API_URL, default https://api.bem.ai)"),
    "--api-version": ("BEM_API_VERSION", "v3, or v2 for legacy accounts (BEM_API_VERSION)"),
    "--api-key-file": ("BEM_API_KEY_FILE", "file holding the API key (BEM_API_KEY_FILE)"),
    "--poll-interval": ("BEM_POLL_INTERVAL", "time between poll cycles, e.g. 15s (BEM_POLL_INTERVAL)"),
    "--lookback": ("BEM_LOOKBACK", "on first start, pick up calls this far back, e.g. 1h (BEM_LOOKBACK)"),
    "--workflows": ("BEM_WORKFLOWS", "comma list of workflow names to watch; default all (BEM_WORKFLOWS)"),
    "--state-path": ("BEM_STATE_PATH", "SQLite state file, or :memory: (BEM_STATE_PATH)"),
    "--listen": ("BEM_LISTEN", f"host:port of /metrics, /healthz, /readyz (default 0.0.0.0:{DEFAULT_LISTEN_PORT})"),
    "--max-concurrency": ("BEM_MAX_CONCURRENCY", "API requests in flight (BEM_MAX_CONCURRENCY, default 16)"),
    "--max-rps": ("BEM_MAX_RPS", "API requests per second (BEM_MAX_RPS, default 50)"),
    "--log-level": ("BEM_LOG_LEVEL", "debug, info, warning, error (BEM_LOG_LEVEL)"),
    "--log-format": ("BEM_LOG_FORMAT", "auto, json, text (BEM_LOG_FORMAT)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit 2, like every other settings error.
        self.exit(2, f"bem-exporter: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bem-exporter",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    }
    for name, text in helps.items():
        command = commands.add_parser(name, help=text, description=text)
        if name == "simulate":
            _simulator_flags(command)
            continue
        command.add_argument("--config", metavar="FILE", help="TOML file of settings (keys: docs/configuration.md)")
        for flag, (_, flag_help) in _COMMON_FLAGS.items():
            command.add_argument(flag, metavar="VALUE", help=flag_help)
        if name == "demo":
            command.add_argument("--rate", type=float, default=1.0, help="simulated new calls per second (1)")
            command.add_argument("--prefill", type=int, default=200, help="calls already in the history (200)")
    return parser


def _simulator_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--listen", default="127.0.0.1:8787", help="host:port to serve on (127.0.0.1:8787)")
    command.add_argument("--seed", type=int, default=1, help="workload seed (1)")
    command.add_argument("--rate", type=float, default=1.0, help="new calls per second (1)")
    command.add_argument("--prefill", type=int, default=0, help="calls created in the past before start (0)")
    command.add_argument("--history", default="1h", help="how far back prefilled calls start (1h)")
    command.add_argument("--speed", type=float, default=1.0, help="workload time multiplier (1)")
    command.add_argument("--latency", type=float, default=0.0, help="seconds added to every response (0)")
    command.add_argument("--failure-rate", type=float, default=0.15, help="share of calls that fail (0.15)")
    command.add_argument("--api-key", default="sim-key", help="the key the simulator accepts (sim-key)")
    command.add_argument("--no-auth", action="store_true", help="accept requests without a key")
    command.add_argument(
        "--canary-outcome",
        choices=("normal", "fail", "hang"),
        default="normal",
        help="what becomes of canary calls (callReferenceID bem-exporter-canary-*): normal, fail or hang",
    )
    command.add_argument(
        "--canary-reject", type=int, metavar="STATUS", help="answer canary create requests with this HTTP status"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "simulate":
            return _simulate(args)
        settings = _settings(args)
    except SettingsError as error:
        print(f"bem-exporter: error: {error}", file=sys.stderr)
        return 2
    secrets = [settings.api.key.get()] if settings.api.key else []
    logs.setup(settings.log_level, "text" if args.command == "demo" else settings.log_format, secrets)
    from exporter import app  # imported late: `--help` and settings errors stay fast

    try:
        if args.command == "run":
            return asyncio.run(app.run(settings))
        if args.command == "once":
            return asyncio.run(app.once(settings))
        if args.command == "check":
            return asyncio.run(app.check(settings))
        return asyncio.run(app.demo(settings, args.rate, args.prefill))
    except StateError as error:
        return app.fail(str(error))
    except KeyboardInterrupt:
        return 130
    except OSError as error:
        # e.g. the listen port is taken
        return app.fail(f"{error.strerror or error}")


def _settings(args: argparse.Namespace) -> Settings:
    flags = {
        env: value
        for flag, (env, _) in _COMMON_FLAGS.items()
        if (value := getattr(args, flag.lstrip("-").replace("-", "_"))) is not None
    }
    if args.command == "demo":
        # The demo needs no key, keeps no state and polls often so something moves.
        flags.setdefault("BEM_STATE_PATH", ":memory:")
        flags.setdefault("BEM_POLL_INTERVAL", "5s")
        flags.setdefault("BEM_LOOKBACK", "1h")
    return load_settings(flags, config_file=args.config, require_key=args.command in ("run", "once", "check"))


def _simulate(args: argparse.Namespace) -> int:
    from exporter.bem.simulator import Faults, SimulatorConfig, serve

    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        raise SettingsError(f"--listen: {args.listen!r} is not host:port")
    config = SimulatorConfig(
        seed=args.seed,
        arrival_rate=args.rate,
        prefill=args.prefill,
        history=parse_duration("--history", args.history),
        speed=args.speed,
        latency=args.latency,
        failure_rate=args.failure_rate,
        api_key=None if args.no_auth else args.api_key,
        faults=Faults(canary_outcome=args.canary_outcome, canary_reject=args.canary_reject),
    )
    try:
        config.validate()
    except ValueError as error:
        raise SettingsError(f"simulate: {error}") from None
    logs.setup("info", "auto")
    logging.getLogger("exporter").info("starting the bem API simulator")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, host or "127.0.0.1", int(port)))
    return 0
