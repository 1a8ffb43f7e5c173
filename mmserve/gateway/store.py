"""Where keys, rate-limit buckets, quotas and usage live: SQLite on one box, Redis for replicas.

Both stores answer the same async calls, and both make each decision in one atomic step
(a ``BEGIN IMMEDIATE`` transaction, a Lua script), so limits and usage stay exact
whichever replica or process a request reaches:

- ``admit``: the key's token bucket (``rate`` requests/s, a burst of one second) and its
  monthly quota of items, checked and taken together; a refused request takes neither.
- ``refund``: items given back when an admitted request then fails.
- ``record``: one answered request, counted per hour x tenant x product x status before
  the answer is sent, so a restart loses nothing already answered. SQLite runs in WAL
  mode with ``synchronous=NORMAL`` (a committed row survives a crashed process; an
  operating-system crash may lose the last moments); Redis keeps what its persistence
  (``appendonly yes``) keeps.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol

from .keys import KeyRecord, now_iso, utcnow

STORE_ENV = "MMSERVE_GATEWAY_STORE"
STORE_FILE = ".mmserve-gateway.sqlite3"  # the default: beside the audit log, in the repository
REDIS_PREFIX = "mmserve:gw"


class StoreError(RuntimeError):
    """The store cannot be opened or reached; the message says which and how to fix it."""


@dataclass(frozen=True)
class Admission:
    ok: bool
    retry_after: float = 0.0  # seconds, when rate-limited
    over_quota: bool = False
    used: int = 0  # items already used this month, when over quota


@dataclass(frozen=True)
class UsageRow:
    hour: str  # "2026-12-07T17:00:00+00:00": the hour (UTC) the requests were answered in
    tenant: str
    product: str
    status: int
    requests: int
    items: int
    bytes: int


class Store(Protocol):
    async def add_key(self, record: KeyRecord) -> None: ...
    async def keys(self) -> list[KeyRecord]: ...
    async def revoke(self, key_id: str) -> KeyRecord | None: ...
    async def find(self, key_hash: str) -> KeyRecord | None: ...
    async def admit(self, record: KeyRecord, items: int) -> Admission: ...
    async def refund(self, record: KeyRecord, items: int) -> None: ...
    async def record(self, tenant: str, product: str, status: int, items: int, nbytes: int) -> None: ...
    async def usage(self, since: datetime, until: datetime | None = None) -> list[UsageRow]: ...
    async def quota_used(self, record: KeyRecord) -> int: ...
    async def close(self) -> None: ...


def month(now: datetime | None = None) -> str:
    return (now or utcnow()).strftime("%Y-%m")


def hour(now: datetime | None = None) -> str:
    return (now or utcnow()).replace(minute=0, second=0, microsecond=0).isoformat()


def open_store(url: str | os.PathLike | None, repository: Path | None = None, *, create: bool = True) -> Store:
    """``redis://HOST:PORT/DB`` (or ``rediss://``), ``sqlite:///PATH`` or a path; default
    ``$MMSERVE_GATEWAY_STORE``, else ``REPOSITORY/.mmserve-gateway.sqlite3``. ``create=False``:
    a SQLite file that does not exist yet is a StoreError (a reader never creates one)."""
    text = os.fspath(url) if url is not None else os.environ.get(STORE_ENV, "")
    if not text:
        if repository is None:
            raise StoreError(f"no store: give --store (sqlite:///PATH or redis://HOST:PORT) or set {STORE_ENV}")
        text = str(Path(repository) / STORE_FILE)
    if text.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(text)
    path = Path(text.removeprefix("sqlite://"))
    if not create and not path.exists():
        raise StoreError(f"no gateway store at {path} yet: it appears with the first `mmserve keys create` "
                         f"(or set {STORE_ENV} to the gateway's store)")
    return SqliteStore(path)


# --- SQLite -------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
  id TEXT PRIMARY KEY, key_hash TEXT UNIQUE NOT NULL, record TEXT NOT NULL, revoked TEXT);
CREATE TABLE IF NOT EXISTS buckets (key_id TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS quota (key_id TEXT, month TEXT, items INTEGER NOT NULL, PRIMARY KEY (key_id, month));
CREATE TABLE IF NOT EXISTS usage (
  hour TEXT, tenant TEXT, product TEXT, status INTEGER,
  requests INTEGER NOT NULL, items INTEGER NOT NULL, bytes INTEGER NOT NULL,
  PRIMARY KEY (hour, tenant, product, status));
"""


def _to_record(text: str, revoked: str | None) -> KeyRecord:
    fields = json.loads(text)
    fields["products"] = tuple(fields["products"])
    fields["revoked"] = revoked
    return KeyRecord(**fields)


def _from_record(record: KeyRecord) -> str:
    fields = record.__dict__.copy()
    fields["products"] = list(record.products)
    fields.pop("revoked")
    return json.dumps(fields, sort_keys=True)


class SqliteStore:
    """One file, shared by every gateway process on this machine. Calls are short local
    transactions, run inline on the event loop (a thread hop would cost more than they do)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not path.exists()
            self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
            if fresh:
                os.chmod(path, 0o600)  # key hashes and usage: the operator's only
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open the gateway store {path}: {error}; give --store or set {STORE_ENV}") from None

    def _transaction(self, work):  # noqa: ANN001, ANN202 - a function of the connection
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def add_key(self, record: KeyRecord) -> None:
        self._db.execute("INSERT INTO keys (id, key_hash, record, revoked) VALUES (?, ?, ?, NULL)",
                         (record.id, record.key_hash, _from_record(record)))

    async def keys(self) -> list[KeyRecord]:
        rows = self._db.execute("SELECT record, revoked FROM keys ORDER BY rowid").fetchall()
        return [_to_record(text, revoked) for text, revoked in rows]

    async def revoke(self, key_id: str) -> KeyRecord | None:
        def work(db: sqlite3.Connection) -> KeyRecord | None:
            row = db.execute("SELECT record, revoked FROM keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                return None
            revoked = row[1] or now_iso()
            db.execute("UPDATE keys SET revoked = ? WHERE id = ?", (revoked, key_id))
            return _to_record(row[0], revoked)

        return self._transaction(work)

    async def find(self, key_hash: str) -> KeyRecord | None:
        row = self._db.execute("SELECT record, revoked FROM keys WHERE key_hash = ?", (key_hash,)).fetchone()
        return _to_record(*row) if row else None

    async def admit(self, record: KeyRecord, items: int) -> Admission:
        if not record.rate and record.quota is None:
            return Admission(True)  # nothing to count against: no transaction

        def work(db: sqlite3.Connection) -> Admission:
            now = time.time()
            tokens = None
            if record.rate:
                capacity = max(1.0, record.rate)
                row = db.execute("SELECT tokens, updated FROM buckets WHERE key_id = ?", (record.id,)).fetchone()
                tokens = capacity if row is None else min(capacity, row[0] + max(0.0, now - row[1]) * record.rate)
                if tokens < 1.0:
                    return Admission(False, retry_after=(1.0 - tokens) / record.rate)
            if record.quota is not None:
                this_month = month()
                row = db.execute("SELECT items FROM quota WHERE key_id = ? AND month = ?",
                                 (record.id, this_month)).fetchone()
                used = row[0] if row else 0
                if used + items > record.quota:
                    return Admission(False, over_quota=True, used=used)
                db.execute("INSERT INTO quota VALUES (?, ?, ?) ON CONFLICT (key_id, month) "
                           "DO UPDATE SET items = items + excluded.items", (record.id, this_month, items))
            if tokens is not None:
                db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?)", (record.id, tokens - 1.0, now))
            return Admission(True)

        return self._transaction(work)

    async def refund(self, record: KeyRecord, items: int) -> None:
        if record.quota is not None and items:
            self._db.execute("UPDATE quota SET items = MAX(0, items - ?) WHERE key_id = ? AND month = ?",
                             (items, record.id, month()))

    async def quota_used(self, record: KeyRecord) -> int:
        row = self._db.execute("SELECT items FROM quota WHERE key_id = ? AND month = ?",
                               (record.id, month())).fetchone()
        return row[0] if row else 0

    async def record(self, tenant: str, product: str, status: int, items: int, nbytes: int) -> None:
        self._db.execute(
            "INSERT INTO usage VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT (hour, tenant, product, status) DO UPDATE SET "
            "requests = requests + 1, items = items + excluded.items, bytes = bytes + excluded.bytes",
            (hour(), tenant, product, status, items, nbytes),
        )

    async def usage(self, since: datetime, until: datetime | None = None) -> list[UsageRow]:
        rows = self._db.execute(
            "SELECT hour, tenant, product, status, requests, items, bytes FROM usage WHERE hour >= ? AND hour < ? "
            "ORDER BY hour, tenant, product, status",
            (hour(since), hour(until) if until else "9999"),
        ).fetchall()
        return [UsageRow(*row) for row in rows]

    async def close(self) -> None:
        self._db.close()


# --- Redis --------------------------------------------------------------------------

# KEYS: bucket, quota. ARGV: rate (0: none), capacity, quota (-1: none), items, quota TTL.
# Redis's own clock, so replicas with skewed clocks share one bucket correctly.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local quota, items = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = capacity
if rate > 0 then
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
  if b[1] then tokens = math.min(capacity, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * rate) end
  if tokens < 1 then return {1, tostring((1 - tokens) / rate)} end
end
if quota >= 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used + items > quota then return {2, tostring(used)} end
  redis.call('INCRBY', KEYS[2], items)
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
end
if rate > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[1], 3600)
end
return {0, '0'}
"""
_SEP = "\x1f"
_QUOTA_TTL_S = 70 * 24 * 3600


class RedisStore:
    """Keys, buckets, quotas and usage in one Redis that every replica shares."""

    def __init__(self, url: str, prefix: str = REDIS_PREFIX) -> None:
        try:
            import redis.asyncio as redis
        except ImportError:
            raise StoreError("a redis:// store needs the 'redis' package: pip install 'mmserve[gateway]'") from None
        self.url = url
        self._redis = redis.from_url(url, decode_responses=True)
        self._admit = self._redis.register_script(_ADMIT)
        self._p = prefix

    async def _do(self, awaitable):  # noqa: ANN001, ANN202
        from redis.exceptions import RedisError

        try:
            return await awaitable
        except (RedisError, OSError) as error:
            raise StoreError(f"the gateway store {self.url} is unreachable: {error}") from None

    async def add_key(self, record: KeyRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(f"{self._p}:key:{record.key_hash}", _from_record(record))
            pipe.hset(f"{self._p}:keys", record.id, record.key_hash)
            await self._do(pipe.execute())

    async def keys(self) -> list[KeyRecord]:
        ids = await self._do(self._redis.hgetall(f"{self._p}:keys"))
        records = []
        for key_hash in ids.values():
            record = await self.find(key_hash)
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: (r.created, r.id))

    async def revoke(self, key_id: str) -> KeyRecord | None:
        key_hash = await self._do(self._redis.hget(f"{self._p}:keys", key_id))
        if key_hash is None:
            return None
        revoked_key = f"{self._p}:revoked:{key_hash}"
        await self._do(self._redis.set(revoked_key, now_iso(), nx=True))
        return await self.find(key_hash)

    async def find(self, key_hash: str) -> KeyRecord | None:
        text, revoked = await self._do(
            self._redis.mget(f"{self._p}:key:{key_hash}", f"{self._p}:revoked:{key_hash}"))
        return _to_record(text, revoked) if text else None

    async def admit(self, record: KeyRecord, items: int) -> Admission:
        if not record.rate and record.quota is None:
            return Admission(True)
        rate = record.rate or 0.0
        code, value = await self._do(self._admit(
            keys=[f"{self._p}:bucket:{record.id}", f"{self._p}:quota:{record.id}:{month()}"],
            args=[rate, max(1.0, rate), -1 if record.quota is None else record.quota, items, _QUOTA_TTL_S],
        ))
        if int(code) == 1:
            return Admission(False, retry_after=float(value))
        if int(code) == 2:
            return Admission(False, over_quota=True, used=int(value))
        return Admission(True)

    async def refund(self, record: KeyRecord, items: int) -> None:
        if record.quota is not None and items:
            await self._do(self._redis.decrby(f"{self._p}:quota:{record.id}:{month()}", items))

    async def quota_used(self, record: KeyRecord) -> int:
        return int(await self._do(self._redis.get(f"{self._p}:quota:{record.id}:{month()}")) or 0)

    async def record(self, tenant: str, product: str, status: int, items: int, nbytes: int) -> None:
        now = utcnow()
        bucket, field = f"{self._p}:usage:{hour(now)}", _SEP.join((tenant, product, str(status)))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(bucket, field + _SEP + "requests", 1)
            pipe.hincrby(bucket, field + _SEP + "items", items)
            pipe.hincrby(bucket, field + _SEP + "bytes", nbytes)
            pipe.zadd(f"{self._p}:usage-hours", {hour(now): _epoch_hour(now)})
            await self._do(pipe.execute())

    async def usage(self, since: datetime, until: datetime | None = None) -> list[UsageRow]:
        hours = await self._do(self._redis.zrangebyscore(
            f"{self._p}:usage-hours", _epoch_hour(since), "+inf" if until is None else _epoch_hour(until) - 1))
        rows = []
        for name in hours:
            counts: dict[tuple[str, str, int], dict[str, int]] = {}
            for field, value in (await self._do(self._redis.hgetall(f"{self._p}:usage:{name}"))).items():
                tenant, product, status, metric = field.split(_SEP)
                counts.setdefault((tenant, product, int(status)), {})[metric] = int(value)
            for (tenant, product, status), metric in sorted(counts.items()):
                rows.append(UsageRow(name, tenant, product, status, metric.get("requests", 0),
                                     metric.get("items", 0), metric.get("bytes", 0)))
        return rows

    async def close(self) -> None:
        await self._redis.aclose()


def _epoch_hour(moment: datetime) -> int:
    return int(math.floor(moment.replace(minute=0, second=0, microsecond=0).timestamp()))


def since_time(text: str) -> datetime:
    """'2026-12-01', an ISO time, or a span back from now: '24h', '7d', '30m'."""
    text = text.strip()
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return utcnow() - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r}: give a date (2026-12-01), an ISO 8601 time or a span (24h, 7d)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def run(coroutine):  # noqa: ANN001, ANN201 - the CLI's way into the async stores
    return asyncio.run(coroutine)
