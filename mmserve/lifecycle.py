"""The product lifecycle: what a repository serves, as products, and the admin actions on them.

One core for the CLI (`mmserve products|load|unload|reload|rollback`), the client and the
console. A product is a pipeline of the public contract (an ensemble, or a fused model),
told apart from its internal steps by :mod:`mmserve.client.products`; its versions and
product cards are the exporters' on-disk version scheme (:mod:`mmserve.exporters.versions`);
its state comes from the running server through :class:`mmserve.client.Client`; what a
product is, as shown (served and on-disk versions, the words for changing them), is
:mod:`mmserve.product_view`'s. The server must serve this repository
(:mod:`mmserve.served_repository`), else every call refuses before acting or writing.

Every admin action is appended to an audit log (JSON lines; who, what, when in UTC, and
the result, failures included) before its error, if any, reaches the caller.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mmserve.client.products import find_products, model_state, served_version, steps_of, tensor_specs
from mmserve import audit as _audit
from mmserve.product_view import (  # noqa: F401 - what a product is, shown; re-exported for callers
    UNKNOWN,
    Product,
    StepInfo,
    VersionChange,
    VersionInfo,
    drift_text,
    headline,
    version_changes,
)
from mmserve.repository_layout import LABELS_FILE

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

    from mmserve.pipelines import Kind

    from mmserve.client import Client, ModelInfo

# Inside the repository, so the log travels with what it describes; a file, not a folder,
# so neither Triton's repository index nor repository_models() takes it for a model.
AUDIT_LOG = _audit.AUDIT_LOG  # the log itself: mmserve/audit.py (hash-chained, attempt before acting)
UNLOAD_WAIT_S = 120.0  # how long unload waits for Triton to finish, when the client sets no timeout


class LifecycleError(Exception):
    """An admin action that cannot be done as asked; the message says what to do instead."""


class UnknownProductError(LifecycleError, LookupError):
    """The name is not a product of the repository (a step, a typo, another repository)."""

    def __init__(self, name: str, products: Sequence[str], step_of: Sequence[str] = ()) -> None:
        self.name = name
        self.products = tuple(products)
        if step_of:
            why = f"'{name}' is an internal step of {', '.join(step_of)}, not a product"
        else:
            why = f"no product '{name}' in the repository"
        listed = ", ".join(self.products) if self.products else "none (export one first)"
        super().__init__(f"{why}; products: {listed}")


class VersionError(LifecycleError):
    """A rollback target that does not exist, or no earlier version to go back to."""


class ServerRequiredError(LifecycleError):
    """The action changes what a server serves, and no server was given."""


class SwitchFailedError(LifecycleError):
    """The server could not load the new version; it still serves the one before."""


class RepositoryMismatchError(LifecycleError):
    """``--repository`` is not the repository the server serves: acting on it (or writing
    its audit log) would describe another server's products."""


@dataclass(frozen=True)
class AuditEntry:
    time: str  # ISO 8601, UTC
    actor: str
    action: str
    product: str
    detail: str
    result: str  # "ok" or the error

    @property
    def ok(self) -> bool:
        return self.result == "ok"


def default_actor(client: Client | None = None) -> str:
    """Who acts: user@host and the fingerprint of the admin key the client authenticates with
    (the console passes its signed-in user instead)."""
    headers = getattr(client, "_admin_headers", None) or {}
    return _audit.actor_for(headers.get("admin-key"))


class _Index:
    """The server's repository index, by model name."""

    def __init__(self, models: Sequence[ModelInfo]) -> None:
        self.rows: dict[str, list[ModelInfo]] = {}
        for info in models:
            self.rows.setdefault(info.name, []).append(info)

    def state(self, name: str, version: int | None = None) -> tuple[str, str]:
        return model_state(self.rows.get(name, []), version)

    def served(self, name: str) -> int | None:
        """The version of a model the server has READY (the newest, if a switch has two)."""
        return served_version(self.rows.get(name, []))


class Lifecycle:
    """Products of one repository, their versions and cards, and the admin actions on them.

    ``client`` (a :class:`mmserve.client.Client` connected to the server that serves
    ``repository``) is needed for states and for load/unload/reload; without it products
    are listed from disk with state UNKNOWN. ``actor`` names who acts in the audit log.
    """

    def __init__(
        self,
        repository: Path | None,
        client: Client | None = None,
        *,
        audit_log: Path | None = None,
        actor: str | None = None,
    ) -> None:
        if repository is None and client is not None:  # the server's own, when it runs on this host
            from mmserve.served_repository import local_repository

            repository = local_repository(client.url)
        if repository is None and client is None:
            raise LifecycleError("give a repository, a server, or both")
        self.repository = Path(repository) if repository is not None else None
        self.client = client
        if audit_log is None and self.repository is not None:
            audit_log = self.repository / AUDIT_LOG
        self.audit_log = Path(audit_log) if audit_log is not None else None
        self.actor = actor or default_actor(client)
        self._checked = False

    # --- reading --------------------------------------------------------------------

    def products(self) -> list[Product]:
        """Every product of the repository, in name order, with its steps and state.
        Without a repository (a server elsewhere): what the server has loaded or tried to,
        from its index and model configs (no versions on disk, no cards)."""
        self.check_repository()
        if self.repository is None:
            return self._server_products()
        return self._products()

    def product(self, name: str) -> Product:
        """One product; UnknownProductError (listing the products) for any other name,
        told from the repository before any server is asked."""
        self.check_repository()
        if self.repository is None:
            products = {p.name: p for p in self._server_products()}
            if name not in products:
                raise UnknownProductError(name, list(products))
            return products[name]
        return self._products(only=name)[0]

    def check_repository(self) -> None:
        """RepositoryMismatchError unless the server serves this repository (checked once
        per Lifecycle; see mmserve/served_repository.py for how)."""
        if self._checked or self.client is None or self.repository is None:
            return
        from mmserve.served_repository import mismatch

        client = self.client
        reason = mismatch(self.repository, client.url, client.server_id(), lambda: [m.name for m in client.models()])
        if reason is not None:
            raise RepositoryMismatchError(reason)
        self._checked = True

    # --- admin actions --------------------------------------------------------------

    def load(self, name: str) -> AuditEntry:
        """Load the product and, through Triton's ensemble dependencies, its steps."""

        def act() -> str:
            product = self.product(name)
            _server_load(self._server("load"), product.name)
            return f"loaded {product.name} ({_version_text(product.active_version)})"

        return self._audited("load", name, act)

    def unload(self, name: str) -> AuditEntry:
        """Unload the product, then the steps no other loaded product still calls."""

        def act() -> str:
            product = self.product(name)
            client = self._server("unload")
            _server_unload(client, product.name)
            still_used = self._steps_of_loaded_products(exclude=product.name)
            freed = [step.name for step in product.steps if step.name not in still_used]
            for step in freed:
                _server_unload(client, step)
            kept = [step.name for step in product.steps if step.name in still_used]
            pending = self._wait_unloaded([product.name, *freed])
            detail = f"unloaded {product.name}" + (f" and {', '.join(freed)}" if freed else "")
            detail += f"; kept {', '.join(kept)} (used by other loaded products)" if kept else ""
            return detail + (f"; still unloading: {', '.join(pending)}" if pending else "")

        return self._audited("unload", name, act)

    def reload(self, name: str) -> AuditEntry:
        """Make a live server serve the version the disk names (after an export), without
        a failed request.

        The switch is the version scheme's (``versions.serve_active``): the new version is
        first loaded under names of its own (if it does not load, nothing changes), steps
        that cannot sit beside their old version are bridged, then the product's ensembles
        are loaded in place and Triton swaps each model once its new version is ready.
        """
        from mmserve.exporters import versions

        def act() -> str:
            product = self.product(name)
            client = self._server("reload")
            served = self._served_version(client, name)
            with _switch_errors():
                models = versions.serve_active(self.repository, name, served, *_model_control(client))
            active = product.active_version
            if served is None:
                change = f"{_version_text(active)}, not loaded before"
            elif served == active:
                change = f"{_version_text(active)} already served (nothing new on disk)"
            else:
                change = f"version {served} -> {active}"
            return f"{change}; reloaded {', '.join(models)}"

        return self._audited("reload", name, act)

    def rollback(self, name: str, to: int | None = None) -> AuditEntry:
        """Serve another version (by default the one before the served one), on disk and,
        given a server, on it too, with no failed request. Audited as "rollback",
        "roll-forward" or "make-live" by the direction (:class:`VersionChange`)."""
        audited = {"action": "rollback"}

        def act() -> str:
            product = self.product(name)
            current = product.live_version
            available = [v.version for v in product.versions]
            target = to if to is not None else _previous(available, current)
            if target is None and current is None:
                raise VersionError(f"{name} is not served: name the version to make live (versions: "
                                   f"{', '.join(map(str, available)) or 'none'}), or load it")
            if target is None:
                raise VersionError(
                    f"{name} serves v{current}, its oldest version: there is no earlier one to roll back to "
                    f"(versions: {', '.join(map(str, available)) or 'none'})"
                )
            change = VersionChange(name, current, target)
            audited["action"] = change.action if target != current else "rollback"
            return self._make_live(product, change, available)

        return self._audited(lambda: audited["action"], name, act)

    def make_live(self, name: str, version: int) -> AuditEntry:
        """Serve ``version`` of the product: a rollback, a roll forward or the first version
        made live, whichever it is (the console's one action for all three)."""
        return self.rollback(name, to=version)

    def _make_live(self, product: Product, change: VersionChange, available: Sequence[int]) -> str:
        from mmserve.exporters import versions

        name, target, active = product.name, change.target, product.active_version
        if target not in available:
            raise VersionError(
                f"{name} has no version {target}; versions: {', '.join(map(str, available)) or 'none'}"
            )
        if target == change.current:
            raise VersionError(f"{name} already serves version {target}")
        client = self.client  # None: on disk only, served from the next start
        with _switch_errors():
            if client is None:
                versions.set_active_version(self.repository, name, target)
                return f"version {active} -> {target} on disk; no server given, served from its next start"
            _server_ready(client)  # change the disk only when the server can follow it
            if target == active:  # on disk already (an export not yet reloaded): serve it
                models = versions.serve_active(self.repository, name, change.current, *_model_control(client))
            else:
                models = versions.set_active_version(self.repository, name, target, *_model_control(client))
        return f"version {change.current} -> {target}; reloaded {', '.join(models)}"

    def record(self, action: str, product: str, detail: str, result: str = "ok") -> AuditEntry:
        """Append an entry for an action done elsewhere (an export, a refusal told before any
        lifecycle call) to this repository's audit log."""
        entry = AuditEntry(_now(), self.actor, action, product, detail, result)
        self._append(entry)
        return entry

    def audit(self, limit: int = 200) -> list[AuditEntry]:
        """The newest ``limit`` entries of the audit log, newest first (read from its end,
        so a years-long log costs what the entries shown cost)."""
        entries: list[AuditEntry] = []
        if self.audit_log is None:  # a server elsewhere, its repository not at hand
            return entries
        for record in _audit.AuditLog(self.audit_log).entries(limit):
            try:
                entries.append(AuditEntry(**{key: str(record[key]) for key in AuditEntry.__dataclass_fields__}))
            except KeyError:
                continue  # a foreign record: the rest of the log still reads
        return entries

    # --- internals ------------------------------------------------------------------

    def _products(self, only: str | None = None) -> list[Product]:
        configs = self._configs()
        kinds = find_products(configs, self._card_kind)
        if only is not None and only not in kinds:
            step_of = [product for product in kinds if only in steps_of(configs[product])]
            raise UnknownProductError(only, list(kinds), step_of)
        index = self._index()
        users: dict[str, list[str]] = {}
        for product in kinds:
            for step in steps_of(configs[product]):
                users.setdefault(step, []).append(product)
        names = [only] if only is not None else list(kinds)
        return [self._product(name, kinds[name], configs, users, index) for name in names]

    def _configs(self) -> dict[str, model_config_pb2.ModelConfig]:
        """Every model's config.pbtxt; one Triton could not read either is left out (the
        server's index then says why)."""
        from mmserve.exporters.versions import CONFIG_FILE, read_config

        configs = {}
        for path in sorted(self.repository.glob(f"*/{CONFIG_FILE}")):
            config = read_config(path)
            if config is not None and not _switch_copy(path.parent.name):
                configs[path.parent.name] = config
        return configs

    def _server_products(self) -> list[Product]:
        """The products of a server whose repository is not at hand, from what it reports."""
        client = self._server("products")
        index = self._index()
        infos = client.products()
        users: dict[str, int] = {}
        for info in infos:
            for step in info.steps:
                users[step] = users.get(step, 0) + 1
        return [
            Product(
                name=info.name, kind=info.kind, inputs=info.inputs, outputs=info.outputs, labels=(),
                steps=tuple(StepInfo(step, users[step] > 1, (), index.state(step)[0] if index else None)
                            for step in info.steps),
                versions=(), active_version=None, state=info.state, reason=info.reason,
                served_version=info.served_version,
            )
            for info in infos
        ]

    def _index(self) -> _Index | None:
        return _Index(self.client.models()) if self.client is not None else None

    def _product(
        self,
        name: str,
        kind: Kind,
        configs: Mapping[str, model_config_pb2.ModelConfig],
        users: Mapping[str, Sequence[str]],
        index: _Index | None,
    ) -> Product:
        from mmserve.exporters import versions

        config = configs[name]
        numbers = versions.product_versions(self.repository, name)
        active = versions.active_version(self.repository, name)
        version_infos = tuple(
            VersionInfo(number, number == active, versions.read_card(self.repository, name, number))
            for number in numbers
        )
        steps = tuple(
            StepInfo(
                step,
                len(users.get(step, ())) > 1,
                tuple(versions.version_folders(self.repository / step)),
                index.state(step)[0] if index is not None else None,
            )
            for step in steps_of(config)
        )
        state, reason = index.state(name, active) if index is not None else (UNKNOWN, "")
        served = index.served(name) if index is not None else None
        return Product(
            name=name,
            kind=kind,
            inputs=tensor_specs(config.input),
            outputs=tensor_specs(config.output),
            labels=self._labels([s.name for s in steps] or [name]),
            steps=steps,
            versions=version_infos,
            active_version=active,
            state=state,
            reason=reason,
            served_version=served,
            drift=drift_text(name, served, active),
        )

    def _card_kind(self, name: str) -> str | None:
        """The kind the active version's card records, to tell apart kinds with equal tensors."""
        from mmserve.exporters import versions

        active = versions.active_version(self.repository, name)
        if active is None:
            return None
        kind = versions.read_card(self.repository, name, active).get("kind")
        return str(kind) if kind else None

    def _labels(self, models: Sequence[str]) -> tuple[str, ...]:
        """The label names of the first model (in call order) that carries a labels file."""
        for model in models:
            path = self.repository / model / LABELS_FILE
            if path.is_file():
                return tuple(line for line in path.read_text(encoding="utf-8").splitlines() if line)
        return ()

    def _server(self, action: str) -> Client:
        if self.client is None:
            raise ServerRequiredError(
                f"{action} changes what a server serves: give the server (mmserve {action} PRODUCT --server HOST:PORT)"
            )
        return self.client

    def _steps_of_loaded_products(self, exclude: str) -> set[str]:
        index = self._index()
        configs = self._configs()
        used: set[str] = set()
        for product in find_products(configs):
            if product != exclude and index is not None and index.state(product)[0] in ("READY", "LOADING"):
                used.update(steps_of(configs[product]))
        return used

    @staticmethod
    def _served_version(client: Client, name: str) -> int | None:
        """The version of the product's ensemble the server has READY (None: not loaded)."""
        return served_version([m for m in client.models() if m.name == name])

    def _wait_unloaded(self, models: Sequence[str]) -> list[str]:
        """Wait (up to the client's timeout) until Triton has let the models go: it unloads
        in the background once requests in flight are done. Returns those still going."""
        client = self._server("unload")
        deadline = time.monotonic() + (client.timeout or UNLOAD_WAIT_S)
        while True:
            index = _Index(client.models())
            pending = [m for m in models if index.state(m)[0] in ("READY", "UNLOADING")]
            if not pending or time.monotonic() >= deadline:
                return pending
            time.sleep(0.1)

    def _audited(self, action: str | Callable[[], str], product: str, act: Callable[[], str]) -> AuditEntry:
        """Run an action and append its entry, success, refusal or failure, before returning
        or raising; never into a repository the server does not serve (RepositoryMismatchError
        is raised before anything is written). ``action`` may be a callable: named once the
        action knows its direction (rollback / roll-forward)."""
        name = action if isinstance(action, str) else None
        if self.repository is None or self.audit_log is None:
            raise LifecycleError(
                f"{name or 'this action'} needs the repository the server serves (its versions and audit log): "
                "pass --repository DIR (found by itself only for a server of this user on this host)"
            )
        try:
            self.check_repository()
        except RepositoryMismatchError:
            raise  # not this repository's to record
        except BaseException as error:  # the server unreachable, a key or certificate refused: on record too
            self._append(AuditEntry(_now(), self.actor, name or action(), product, "", _error_text(error)))
            raise
        # The attempt is on record before anything changes: an unwritable log refuses the action.
        try:
            attempt = _audit.AuditLog(self.audit_log).attempt(
                {"time": _now(), "actor": self.actor, "action": (name or "rollback"), "product": product, "detail": ""})
        except _audit.AuditWriteError as error:
            raise LifecycleError(f"{error}: the action is refused, nothing was changed") from None
        try:
            detail = act()
        except BaseException as error:
            self._append(AuditEntry(_now(), self.actor, name or action(), product, "", _error_text(error)), attempt)
            raise
        entry = AuditEntry(_now(), self.actor, name or action(), product, detail, "ok")
        self._append(entry, attempt)
        return entry

    def _append(self, entry: AuditEntry, attempt: str | None = None) -> None:
        """Chain the entry onto the log (mmserve/audit.py); AuditWriteError when it cannot be written."""
        _audit.AuditLog(self.audit_log).result(attempt, asdict(entry))


def _switch_copy(model: str) -> bool:
    """A model's version under a name of its own (`<model>__v<N>`), there only during a switch."""
    from mmserve.exporters.versions import COPY_MARK

    stem, mark, number = model.rpartition(COPY_MARK)
    return bool(mark) and bool(stem) and number.isdigit()


record_export = _audit.record_export  # its home: mmserve/audit.py (the export driver writes there)
_now = _audit.utc_now
_error_text = _audit.error_text


def _version_text(version: int | None) -> str:
    return f"version {version}" if version is not None else "no version recorded"


def _previous(available: Sequence[int], current: int | None) -> int | None:
    earlier = [v for v in available if current is not None and v < current]
    return max(earlier) if earlier else None


# --- the server's model control, in one place -----------------------------------------


def _server_load(client: Client, name: str) -> None:
    """Load (or reload in place) one model on the server; typed client errors on failure."""
    client.load(name)


def _server_unload(client: Client, name: str) -> None:
    client.unload(name)


def _model_control(client: Client) -> tuple[Callable[[str], None], Callable[[str], None]]:
    """The server's load and unload, as the version scheme's switch takes them."""
    return (lambda model: _server_load(client, model)), (lambda model: _server_unload(client, model))


@contextmanager
def _switch_errors() -> Iterator[None]:
    """The version scheme's errors as the lifecycle's: a version that is not there or not
    servable, a repository that cannot be written, a new version the server did not load."""
    from mmserve.exporters import versions
    from mmserve.exporters.staging import RepositoryError

    try:
        yield
    except versions.VersionNotFoundError as error:
        raise VersionError(str(error)) from error
    except versions.VersionLoadError as error:
        raise SwitchFailedError(str(error)) from error
    except RepositoryError as error:  # read-only, full, or another writer's lock
        raise LifecycleError(str(error)) from error


def _server_ready(client: Client) -> None:
    """Raise the client's ServerUnavailableError (or PermissionDeniedError) unless the
    server answers an admin call."""
    client.models()
