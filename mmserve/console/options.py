"""`mmserve console`'s options about how the console itself is reached (the command's
other options are about Triton). Standard library only: the CLI builds its parser
without importing the web stack."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_web_options(parser: argparse.ArgumentParser) -> None:
    """How `mmserve console` is reached: the options of :class:`ConsoleSettings` that are
    about the console's own HTTP side (the command's other options are about Triton)."""
    web = parser.add_argument_group("how the console is reached (docs/console.md)")
    web.add_argument("--public-read", action="store_true",
                     help="let visitors who have not signed in see products and live figures (never local paths, "
                          "the playground or the audit log); default: everything beyond the landing page needs sign-in")
    web.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                     help="a Host name the console answers besides localhost/127.0.0.1/::1 (repeat); "
                          "other names get 400 (DNS rebinding)")
    web.add_argument("--forwarded-allow-ips", metavar="IPS",
                     help="proxies (comma-separated IPs, or *) whose X-Forwarded-Proto/-For are believed: behind a "
                          "TLS proxy the session cookie is then Secure (default: none)")
    web.add_argument("--https-cert", type=Path, help="the console's own TLS certificate (PEM): it serves https")
    web.add_argument("--https-key", type=Path, help="the private key of --https-cert (PEM)")
    web.add_argument("--insecure", action="store_true",
                     help="allow listening beyond loopback over plain HTTP (the admin key crosses the network readable)")


def web_options(args: argparse.Namespace) -> dict[str, Any]:
    """:class:`ConsoleSettings` fields from :func:`add_web_options`' arguments."""
    return {
        "public_read": args.public_read, "allowed_hosts": tuple(args.allowed_host),
        "forwarded_allow_ips": args.forwarded_allow_ips, "https_cert": args.https_cert,
        "https_key": args.https_key, "insecure": args.insecure,
    }
