"""Key management, audited: one home for `mmserve keys` and the console's Keys panel.

Each action writes an ``attempt`` record to the audit log before it touches the store
and its result after (:mod:`mmserve.audit`): an action whose attempt cannot be written
is not done. Records name the key's id, tenant, products and limits, never the key.
"""
from __future__ import annotations

from pathlib import Path

from mmserve.audit import AuditLog

from .keys import KeyRecord, make_record, now_iso
from .store import Store


def _record(action: str, actor: str, record: KeyRecord) -> dict:
    detail = f"{record.id} tenant={record.tenant} products={','.join(record.products)}"
    detail += f" rate={record.rate:g}/s" if record.rate else ""
    detail += f" quota={record.quota}/month" if record.quota else ""
    detail += f" expires={record.expires}" if record.expires else ""
    return {"time": now_iso(), "actor": actor, "action": action, "product": ",".join(record.products),
            "detail": detail}


async def create_key(store: Store, audit_log: Path, actor: str, tenant: str, products: str | list[str], *,
                     rate: str | float | None = None, quota: str | int | None = None,
                     expires: str | None = None) -> tuple[str, KeyRecord]:
    """A new key (returned once, never stored) and its record; KeyOptionError for a bad option."""
    key, record = make_record(tenant, products, rate=rate, quota=quota, expires=expires)
    audit = AuditLog(audit_log)
    attempt = audit.attempt(_record("keys.create", actor, record))
    try:
        await store.add_key(record)
    except BaseException as error:
        audit.result(attempt, {**_record("keys.create", actor, record), "result": str(error) or type(error).__name__})
        raise
    audit.result(attempt, {**_record("keys.create", actor, record), "result": "ok"})
    return key, record


async def revoke_key(store: Store, audit_log: Path, actor: str, key_id: str) -> KeyRecord | None:
    """Revoke a key by id (None: no such key, recorded as such)."""
    audit = AuditLog(audit_log)
    unknown = KeyRecord(id=key_id, tenant="?", products=(), key_hash="")
    attempt = audit.attempt(_record("keys.revoke", actor, unknown))
    try:
        record = await store.revoke(key_id)
    except BaseException as error:
        audit.result(attempt, {**_record("keys.revoke", actor, unknown), "result": str(error) or type(error).__name__})
        raise
    if record is None:
        audit.result(attempt, {**_record("keys.revoke", actor, unknown), "result": "no such key"})
        return None
    audit.result(attempt, {**_record("keys.revoke", actor, record), "result": "ok"})
    return record
