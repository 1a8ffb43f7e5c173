"""API keys: what a key is allowed, how it is made and how it is recognised.

A key is ``mms-`` + 43 URL-safe characters (256 random bits), shown once at creation;
the store keeps only its SHA-256 (a fast hash is enough for a key this random: nobody
guesses it, and a leaked table gives away no key). A request's key is hashed, found by
that hash and compared in constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

KEY_PREFIX = "mms-"
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PRODUCT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class KeyOptionError(ValueError):
    """A key option that cannot be: the message says what to give instead."""


@dataclass(frozen=True)
class KeyRecord:
    """What the store keeps about one key (never the key itself)."""

    id: str  # short public name, shown in lists and logs
    tenant: str
    products: tuple[str, ...]
    key_hash: str  # sha256 hex of the key
    rate: float | None = None  # requests per second; None: unlimited
    quota: int | None = None  # items per calendar month (UTC); None: unlimited
    expires: str | None = None  # ISO 8601 UTC; None: never
    created: str = field(default_factory=lambda: now_iso())
    revoked: str | None = None

    def allows(self, product: str) -> bool:
        return product in self.products

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and (now or utcnow()) >= datetime.fromisoformat(self.expires)

    def public(self) -> dict:
        """The record as `keys list` and the console show it: no hash."""
        record = asdict(self)
        record.pop("key_hash")
        record["products"] = list(self.products)
        return record


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def now_iso() -> str:
    return utcnow().isoformat(timespec="seconds")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_id() -> str:
    return "key_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def make_record(
    tenant: str,
    products: str | list[str] | tuple[str, ...],
    *,
    rate: str | float | None = None,
    quota: str | int | None = None,
    expires: str | None = None,
) -> tuple[str, KeyRecord]:
    """A new key and its record, the options checked; KeyOptionError names a bad one."""
    if not _TENANT.match(tenant or ""):
        raise KeyOptionError(f"tenant {tenant!r}: use 1-64 letters, digits, '.', '_' or '-'")
    names = parse_products(products)
    key = new_key()
    record = KeyRecord(
        id=new_id(), tenant=tenant, products=names, key_hash=hash_key(key),
        rate=parse_rate(rate), quota=parse_quota(quota), expires=parse_expires(expires),
    )
    return key, record


def parse_products(products: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    names = [p.strip() for p in (products.split(",") if isinstance(products, str) else products)]
    names = [p for p in names if p]
    if not names:
        raise KeyOptionError("--products: name at least one product (comma-separated, e.g. text_embed,image_embed)")
    bad = [p for p in names if not _PRODUCT.match(p)]
    if bad:
        raise KeyOptionError(f"--products: {', '.join(map(repr, bad))} is not a product name")
    return tuple(dict.fromkeys(names))


def parse_rate(rate: str | float | None) -> float | None:
    """'20', '20/s' or '1200/min' -> requests per second."""
    if rate is None or rate == "":
        return None
    text = str(rate).strip().lower()
    number, _, unit = text.partition("/")
    per = {"": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
           "h": 3600.0, "hour": 3600.0}.get(unit)
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if per is None or not value > 0:
        raise KeyOptionError(f"--rate {rate!r}: give requests per second as R or R/s (or R/min, R/h), R > 0")
    return value / per


def parse_quota(quota: str | int | None) -> int | None:
    """'100000', '100000/month' or '100k/month' -> items per calendar month."""
    if quota is None or quota == "":
        return None
    text = str(quota).strip().lower().removesuffix("/month").removesuffix("/mo")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    if scale != 1:
        text = text[:-1]
    try:
        value = int(float(text) * scale)
    except ValueError:
        value = 0
    if value <= 0:
        raise KeyOptionError(f"--quota {quota!r}: give items per month as N or N/month (e.g. 100000 or 100k/month), N > 0")
    return value


def parse_expires(expires: str | None) -> str | None:
    """'2027-01-31' (end of that day, UTC) or an ISO 8601 time -> ISO 8601 UTC."""
    if not expires:
        return None
    try:
        if len(expires) == 10:
            moment = datetime.fromisoformat(expires).replace(hour=23, minute=59, second=59, tzinfo=timezone.utc)
        else:
            moment = datetime.fromisoformat(expires.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
    except ValueError:
        raise KeyOptionError(f"--expires {expires!r}: give a date (2027-01-31) or an ISO 8601 time") from None
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")
