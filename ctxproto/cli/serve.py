"""``ctxproto serve CONFIG.yaml [--host 127.0.0.1] [--port 8080] [--allow-unauthenticated]``."""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any

from rich.console import Console

from ctxproto.cli.arguments import int_between, non_negative_float
from ctxproto.errors import BackendError, ConfigError

__all__ = ["register"]

# Below the 30 s Kubernetes waits by default (terminationGracePeriodSeconds)
# before it kills the process, with room for the cut requests to end (and for
# uvicorn's own bound behind the cut, runner.CUTOFF_BACKSTOP_S).
DEFAULT_SHUTDOWN_GRACE_S = 20.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve an OpenAI-compatible proxy that runs the pipeline on every request",
        description="Serve CONFIG (a serve YAML: pipeline, upstream, tenants, sessions) as "
        "POST /v1/chat/completions, GET /v1/models, /health and /metrics.",
    )
    parser.add_argument("config", help="serve config file (YAML)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int_between(0, 65535),
        default=8080,
        help="port to listen on (default: %(default)s)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=non_negative_float,
        default=DEFAULT_SHUTDOWN_GRACE_S,
        metavar="SECONDS",
        help="on Ctrl-C or SIGTERM, how long requests in flight may run on; then a stream "
        "ends with an error event and a plain request gets a 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="listen beyond loopback although no tenants (API keys) are configured",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ctxproto._extras import require

    for module in ("starlette", "uvicorn", "httpx", "prometheus_client"):
        require(module, extra="serve")
    from uvicorn.config import STARTUP_FAILURE

    from ctxproto.serve import ProxyState, create_app, load_serve_config
    from ctxproto.serve.runner import GracefulServer, uvicorn_config

    config = load_serve_config(args.config)
    if not config.tenants and not _loopback(args.host) and not args.allow_unauthenticated:
        raise ConfigError(
            f"no tenants are configured, so the proxy listens on loopback only, not {args.host}",
            file=args.config,
            key="tenants",
            expected="API keys under tenants, or --allow-unauthenticated",
        )
    # Loading the models (and, the first time on a machine, converting the bundled
    # LM and building its CPU kernels) takes seconds to a minute before uvicorn
    # says a word: say what the wait is, so a silent terminal is not taken for a hang.
    Console(stderr=True, highlight=False).print(
        f"loading {args.config} and its models ...", markup=False, soft_wrap=True
    )
    state = ProxyState.from_config(config, source=args.config)
    state.flow.warm_up()
    server = GracefulServer(
        uvicorn_config(create_app(state), args.host, args.port, log_level="info"),
        grace_s=args.shutdown_grace,
        on_grace_over=state.cutoff.cut,
    )
    try:
        server.run()  # the app closes the upstream on shutdown
    except SystemExit as exc:
        # uvicorn logs why it could not start (a port in use, a host that is no
        # address here), then exits with its own code 3; ours for a failure is 1.
        if exc.code == STARTUP_FAILURE:
            raise BackendError(
                f"the proxy could not start on {args.host}:{args.port} (the reason is above)"
            ) from None
        raise
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
