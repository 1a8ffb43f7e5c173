"""`mmserve audit verify`: check the audit log's hash chain (mmserve/audit.py)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import DEFAULT_REPOSITORY


def _verify(args: argparse.Namespace) -> int:
    from mmserve.audit import AUDIT_LOG, AuditLog

    path = args.audit_log or args.repository / AUDIT_LOG
    if not path.exists():
        print(f"mmserve: no audit log at {path}: pass --repository DIR or --audit-log FILE", file=sys.stderr)
        return 2
    result = AuditLog(path).verify()
    print(result.summary(), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def register(commands) -> None:
    audit = commands.add_parser("audit", help="the audit log of admin actions").add_subparsers(
        dest="audit_command", required=True)
    verify = audit.add_parser(
        "verify", help="check the audit log's hash chain; names the first broken line",
        description="Each record carries the hash of the one before: an edited, removed or inserted record "
        "breaks the chain there.", epilog="exit codes: 0 intact, 1 broken (the line is named), 2 no log",
    )
    verify.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                        help="the repository whose log (REPOSITORY/.mmserve-audit.jsonl) is checked")
    verify.add_argument("--audit-log", type=Path, default=os.environ.get("MMSERVE_AUDIT_LOG"),
                        help="the log file itself (default: $MMSERVE_AUDIT_LOG or the repository's)")
    verify.set_defaults(handler=_verify)
