"""Per-session state (rolling summaries and their checkpoints), persisted in diskcache.

A chat server restarts, runs several worker processes, and serves many tenants.
The state a stage keeps between turns of one conversation therefore lives on
disk in diskcache (SQLite transactions: a write is atomic and safe across
processes), keyed by namespace, tenant id and session id, so a lookup can never
reach another tenant's session, nor another user's state of the same session
(the summarizer's summaries and a chatbot's histories may share one folder).
Values are JSON text, never pickles: the cache is opened with ``PlainDisk``,
which refuses to load a pickled row, so a store file that someone else wrote
cannot run code when it is read.

A folder this process cannot write to (a read-only mount, another user's
folder) is opened read-only: reads work, writes raise ``StoreError``.

Replicas of one proxy share state through a server instead:
``open_session_store`` picks the store from its location, a folder for this
class or a ``redis://`` URL for ``RedisSessionStateStore``. Both satisfy the
``SessionStore`` protocol that the proxy, ``ChatSession`` and the summarizer
use, and share the id checks and the JSON encoding below, so their semantics
cannot drift apart.

State is kept for ever unless the store is opened with ``idle_ttl_s``: then a
session that no ``put`` or ``update`` touched for that long reads as absent and
is removed, as LangChain's ``RedisChatMessageHistory(ttl=...)`` and Redis-backed
memories do with ``EXPIRE``. A proxy serving for months, or a client sending a
new session id per request, otherwise grows the store without bound. A read
never extends a session's life: only a write says the conversation goes on.
Here a row is written with diskcache's ``expire`` and ``remove_expired`` (the
server's sweep, ``ctxproto.serve.session_sweeper``) deletes the rows past it;
the Redis store has the server expire its keys.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

import diskcache

from ctxproto._extras import require
from ctxproto.errors import ConfigError, StoreError
from ctxproto.stores.json_disk import PlainDisk
from ctxproto.stores.read_only_cache import ReadOnlyCache, select_rows, text_keys_from
from ctxproto.stores.storable_text import unstorable
from ctxproto.stores.store_url import store_location

__all__ = [
    "SessionStateStore",
    "SessionStore",
    "check_idle_ttl",
    "check_ids",
    "decode_state",
    "encode_state",
    "idle_ttl_of",
    "open_session_store",
    "remove_expired_sessions",
    "sessions_with_prefix",
]


class SessionStore(Protocol):
    """JSON state per ``(tenant_id, session_id)``; no call ever reaches another tenant's state."""

    read_only: bool
    """Reads work; ``put`` and ``delete`` raise ``StoreError``."""

    @property
    def location(self) -> str:
        """What opens this store again (a folder, or the URL with its password): never print it."""
        ...

    def get(self, tenant_id: str, session_id: str) -> dict[str, Any] | None: ...

    def put(self, tenant_id: str, session_id: str, state: dict[str, Any]) -> None: ...

    def update(
        self,
        tenant_id: str,
        session_id: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any]],
    ) -> dict[str, Any]:
        """Replace the state with ``change(state)`` so that no other write falls between."""
        ...

    def delete(self, tenant_id: str, session_id: str) -> bool: ...

    def sessions(self, tenant_id: str, prefix: str = "") -> list[str]:
        """The session ids this tenant has state for that start with ``prefix``, sorted.

        A store finds them through its index of session ids: the cost grows with
        what matches, not with every session of every tenant in the store.
        """
        ...

    def ping(self) -> None:
        """A ``StoreError`` when the store cannot answer now; one cheap read (``/health``)."""
        ...

    def close(self) -> None: ...


def sessions_with_prefix(store: SessionStore, tenant_id: str, prefix: str) -> list[str]:
    """``store.sessions(tenant_id, prefix)``, sorted.

    A store written to this protocol before ``sessions`` took a prefix is still
    served: it lists every session of the tenant, and the ids are filtered here.
    """
    if _takes_two(store.sessions):
        return store.sessions(tenant_id, prefix)
    return sorted(s for s in store.sessions(tenant_id) if s.startswith(prefix))


def _takes_two(method: Callable[..., object]) -> bool:
    """Whether ``method`` takes a second positional argument (whatever its name), as
    ``sessions(tenant_id, prefix)`` passes one."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = inspect.signature(method).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return True
    return sum(p.kind in positional for p in parameters) >= 2


def remove_expired_sessions(store: SessionStore) -> int:
    """Delete the sessions of ``store`` idle past its ``idle_ttl_s``; how many rows went.

    Only a store that keeps its expired state until swept has this to do (a
    folder); a Redis server expires its keys itself, and a store written to
    this protocol without ``remove_expired`` is left as it is.
    """
    remove = getattr(store, "remove_expired", None)
    return int(remove()) if callable(remove) else 0


def idle_ttl_of(store: SessionStore) -> float | None:
    """The idle TTL ``store`` was opened with; ``None`` (kept for ever) for a store
    written to this protocol without one."""
    ttl = getattr(store, "idle_ttl_s", None)
    return float(ttl) if isinstance(ttl, (int, float)) else None


def check_idle_ttl(idle_ttl_s: float | None) -> float | None:
    """``idle_ttl_s`` when it is ``None`` or a positive, finite number of seconds; else a
    ``ConfigError`` naming it (a boolean is no number, and a TTL of zero would keep nothing)."""
    if idle_ttl_s is None:
        return None
    ok = isinstance(idle_ttl_s, (int, float)) and not isinstance(idle_ttl_s, bool)
    if not ok or not math.isfinite(idle_ttl_s) or idle_ttl_s <= 0:
        raise ConfigError(
            f"must be a positive, finite number of seconds or null, got {idle_ttl_s!r}",
            key="idle_ttl_s",
        )
    return float(idle_ttl_s)


def open_session_store(
    location: str | Path | None, *, namespace: str, idle_ttl_s: float | None = None
) -> SessionStore:
    """The store at ``location``: a ``redis://`` URL, a folder, or ``None`` for a temporary one.

    ``namespace`` keeps the users of one store apart: the proxy's histories, the
    summarizer's summaries and a chatbot's histories may name the same session,
    on one server or in one folder. ``idle_ttl_s``: a session no write touched for
    that long is gone (``None``: kept for ever).
    """
    if isinstance(location, str) and store_location(location) == "redis":
        require("redis", extra="redis")
        from ctxproto.stores.redis_session_state import RedisSessionStateStore

        return RedisSessionStateStore(str(location), namespace=namespace, idle_ttl_s=idle_ttl_s)
    return SessionStateStore(location, namespace=namespace, idle_ttl_s=idle_ttl_s)


def check_ids(tenant_id: str, session_id: str) -> None:
    """Both ids non-empty strings of valid Unicode, or a ``ConfigError`` naming the bad one."""
    for key, value in (("tenant_id", tenant_id), ("session_id", session_id)):
        if not isinstance(value, str) or not value:
            raise ConfigError("must be a non-empty string", key=key)
        if unstorable(value):
            raise ConfigError("must be valid Unicode text", key=key)


def encode_state(tenant_id: str, session_id: str, state: dict[str, Any]) -> str:
    """``state`` as JSON text, or a ``StoreError`` when it is not JSON or not valid Unicode."""
    try:
        text = json.dumps(state, allow_nan=False, ensure_ascii=False, sort_keys=True)
        text.encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise StoreError(
            f"session state of tenant '{tenant_id}' session '{session_id}' must be "
            f"JSON-serializable Unicode text: {exc}"
        ) from exc
    return text


def decode_state(raw: object, where: str) -> dict[str, Any]:
    """A stored value back as a dict, or a ``StoreError`` naming ``where`` when it is not one."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raw = None
    try:
        state = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        state = None
    if not isinstance(state, dict):
        raise StoreError(f"{where} is not a JSON object")
    return state


class SessionStateStore:
    """JSON state per ``(tenant_id, session_id)`` in a diskcache folder, within ``namespace``.

    Keys are ``["session", namespace, tenant, session]`` as JSON, as the Redis
    store's are ``ctxproto:{namespace}:state:{tenant}:{session}``. The default
    namespace, ``history``, is the one ``ChatSession`` opens its
    ``history_path`` with, so the LangChain and LlamaIndex histories built on a
    store of this class continue its conversations.

    Stores before namespaces keyed state by ``["session", tenant, session]`` in
    every namespace. Such a row is still read (and listed) by a store without an
    idle TTL while the session has no row of its own in this namespace, and
    ``delete`` removes it. A write goes to the namespaced key, which is read from
    then on, and leaves the old row: in a folder that users shared, it may hold
    another namespace's state. A store with an idle TTL never reads it: once the
    sweep deleted the session's expired namespaced row, nothing would say that
    one existed, and the older row, within a TTL since lengthened, came back as
    the session's state.

    ``path=None`` makes a store in a fresh temporary folder: state then lasts as
    long as the store, which is what a pipeline without configured persistence
    gets. That folder is removed by ``close``, or when the store is garbage
    collected or the process exits (as ``tempfile.TemporaryDirectory`` does), so
    a proxy or summarizer that never closes its store leaves nothing behind.

    With ``idle_ttl_s``, each write gives its row diskcache's ``expire``, so
    diskcache's reads skip it once that passes and ``remove_expired`` deletes
    it. A row is live while it is within its own deadline, if it has one, and
    was stored within the TTL (``_liveness``, the one rule of ``get`` and
    ``sessions``): a row written before the TTL was configured reads as absent
    once stored longer ago than the TTL, one written under a shorter TTL stays
    expired when the TTL is lengthened, and ``remove_expired`` gives this
    namespace's rows their deadline, so a TTL configured later, or shortened,
    applies to what is already stored.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        namespace: str = "history",
        idle_ttl_s: float | None = None,
    ) -> None:
        self.namespace = namespace
        self.idle_ttl_s = check_idle_ttl(idle_ttl_s)
        self._deadlines_given = False
        self.read_only = False
        self._cache: Any
        self._remove_temporary: weakref.finalize[Any, SessionStateStore] | None = None
        try:
            # diskcache caps a folder at 1 GiB by default and then drops the rows stored
            # first: session state is kept until deleted, or until its idle TTL.
            self._cache = diskcache.Cache(
                None if path is None else str(path), disk=PlainDisk, eviction_policy="none"
            )
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            if path is None or not Path(path).is_dir():
                raise StoreError(f"cannot open session-state store at {path}: {exc}") from exc
            self._cache = ReadOnlyCache(Path(path), PlainDisk)
            self.read_only = True
            self.path = Path(path)
        else:
            self.path = Path(self._cache.directory)
            if path is None:
                self._remove_temporary = weakref.finalize(
                    self, _remove_temporary_store, self._cache, self.path, os.getpid()
                )

    @property
    def location(self) -> str:
        return str(self.path)

    def _key(self, tenant_id: str, session_id: str) -> str:
        check_ids(tenant_id, session_id)
        return json.dumps(["session", self.namespace, tenant_id, session_id])

    @staticmethod
    def _key_before_namespaces(tenant_id: str, session_id: str) -> str:
        return json.dumps(["session", tenant_id, session_id])

    def _read(self, tenant_id: str, session_id: str) -> Any:
        """The raw value of the session if live: its namespaced row, else (with no idle
        TTL, and no namespaced row at all) a row from before namespaces."""
        key = self._key(tenant_id, session_id)
        raw = self._cache.get(key)
        if raw is not None and self._live(key):
            return raw
        if raw is not None or self.idle_ttl_s is not None or self._stored(key):
            # An expired namespaced row hides the older row from before namespaces,
            # which would otherwise come back as the session's state; with a TTL, the
            # namespaced row may have been swept already (see the class docstring).
            return None
        old = self._key_before_namespaces(tenant_id, session_id)
        raw = self._cache.get(old)
        return raw if raw is not None and self._live(old) else None

    def _liveness(self) -> tuple[str, tuple[float, ...]]:
        """The SQL condition a live row meets now, and its parameters: within its own
        deadline, if it has one, and stored within the idle TTL, if there is one.

        ``get`` and ``sessions`` both judge by it, so a listing names exactly the
        sessions that read back. Both bounds hold: a row written under a shorter
        TTL stays expired when the TTL is lengthened, and a TTL shortened (or
        configured after the row was written) applies to it at once.
        """
        now = time.time()
        condition = "(expire_time IS NULL OR expire_time > ?)"
        if self.idle_ttl_s is None:
            return condition, (now,)
        return condition + " AND store_time > ?", (now, now - self.idle_ttl_s)

    def _live(self, key: str) -> bool:
        """Whether the row of ``key`` (read a moment ago) is live (``_liveness``).

        With no idle TTL the only bound is the row's own deadline, which diskcache's
        ``get`` has just checked: no second query on every read.
        """
        if self.idle_ttl_s is None:
            return True
        condition, parameters = self._liveness()
        rows = select_rows(
            self._cache,
            f"SELECT 1 FROM Cache WHERE key = ? AND raw = 1 AND {condition}",
            (key, *parameters),
        )
        return bool(rows)

    def _stored(self, key: str) -> bool:
        """Whether a row of ``key`` is stored, live or not."""
        rows = select_rows(self._cache, "SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (key,))
        return bool(rows)

    def get(self, tenant_id: str, session_id: str) -> dict[str, Any] | None:
        """The state stored for this tenant's session, or ``None``."""
        where = f"session state of tenant '{tenant_id}' session '{session_id}' in {self.path}"
        with self._reporting(where):
            raw = self._read(tenant_id, session_id)
        return None if raw is None else decode_state(raw, where)

    def put(self, tenant_id: str, session_id: str, state: dict[str, Any]) -> None:
        """Replace this session's state, atomically; ``state`` must be JSON-serializable."""
        key = self._key(tenant_id, session_id)
        text = encode_state(tenant_id, session_id, state)
        with self._writing():
            self._cache.set(key, text, expire=self.idle_ttl_s)

    def update(
        self,
        tenant_id: str,
        session_id: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any]],
    ) -> dict[str, Any]:
        """Replace this session's state with ``change(state)``, in one transaction.

        A ``get`` then a ``put`` lets two writers (threads or processes) read the
        same state, and the second write drops what the first added; here the
        second waits for the first and changes what it wrote. ``change`` runs under
        the store's write lock: keep it short. Returns the new state.
        """
        key = self._key(tenant_id, session_id)
        where = f"session state of tenant '{tenant_id}' session '{session_id}' in {self.path}"
        with self._writing(), self._cache.transact():
            raw = self._read(tenant_id, session_id)
            state = change(None if raw is None else decode_state(raw, where))
            self._cache.set(key, encode_state(tenant_id, session_id, state), expire=self.idle_ttl_s)
        return state

    def delete(self, tenant_id: str, session_id: str) -> bool:
        """Forget a session (and its row from before namespaces); ``True`` when it existed."""
        keys = (
            self._key(tenant_id, session_id),
            self._key_before_namespaces(tenant_id, session_id),
        )
        with self._writing(), self._cache.transact():
            removed = [bool(self._cache.delete(key)) for key in keys]
        return any(removed)

    def sessions(self, tenant_id: str, prefix: str = "") -> list[str]:
        """This tenant's session ids in this namespace that start with ``prefix``, sorted.

        Read as ranges of the key index (keys are JSON lists, so the JSON of a
        list ending in ``prefix``, without its closing quote and bracket, starts
        every key whose session id starts with ``prefix``): this namespace's live
        rows; with no idle TTL, also the live rows from before namespaces of the
        sessions with no row of this namespace, live or not, as ``get`` reads them.
        """
        check_ids(tenant_id, "listing")
        ours = json.dumps(["session", self.namespace, tenant_id, prefix])[:-2]
        old = json.dumps(["session", tenant_id, prefix])[:-2]
        live = self._liveness()
        with self._reporting(f"the session-state store at {self.path}"):
            ids = self._ids(ours, 4, tenant_id, *live)
            if self.idle_ttl_s is None:
                hidden = self._ids(ours, 4, tenant_id)  # expired rows hide older ones too
                ids |= self._ids(old, 3, tenant_id, *live) - hidden
        return sorted(ids)

    def _ids(
        self,
        start: str,
        size: int,
        tenant_id: str,
        where: str = "",
        parameters: tuple[float, ...] = (),
    ) -> set[str]:
        """The session ids of ``tenant_id`` in the keys from ``start`` that have ``size``
        parts (4: this namespace's, 3: from before namespaces) and meet ``where``."""
        ids = set()
        for key in text_keys_from(self._cache, start, where=where, parameters=parameters):
            parts = json.loads(key)
            # A range may hold keys of the other kind: with a namespace named like the
            # tenant, rows of this namespace start like rows from before namespaces.
            ours = size == 3 or parts[1] == self.namespace
            if len(parts) == size and ours and parts[-2] == tenant_id:
                ids.add(parts[-1])
        return ids

    def remove_expired(self) -> int:
        """Delete the rows idle past the TTL (a sweep); how many went. Nothing without a TTL.

        The first sweep gives this namespace's rows the deadline their store time
        and the TTL make, where they have none or a later one (written before the
        TTL was configured, or under a longer one). Each sweep then has
        diskcache's ``expire`` delete every row of the folder past its deadline,
        selecting and deleting each batch in one transaction: a write that
        renews a row commits before the batch is selected, and the row is then
        not past its deadline, or after it, and writes the row anew. A sweep
        never loses a fresh write. Rows from before namespaces are left: another
        namespace, kept for ever, may read them.
        """
        if self.idle_ttl_s is None or self.read_only:
            return 0
        with self._writing():
            if not self._deadlines_given:
                self._give_deadlines(self.idle_ttl_s)
                self._deadlines_given = True
            return int(self._cache.expire())

    def _give_deadlines(self, ttl: float) -> None:
        """Give this namespace's rows without a deadline, or with one past ``ttl``, theirs."""
        start = json.dumps(["session", self.namespace])[:-1] + ", "
        with self._cache.transact():
            rows = self._cache._sql(
                "SELECT rowid, key FROM Cache WHERE key >= ? AND key < ? AND raw = 1"
                " AND (expire_time IS NULL OR expire_time > store_time + ?)",
                (start, start + "\U0010ffff", ttl),
            ).fetchall()
            # A row from before namespaces of a tenant named like this namespace
            # falls in the range too: its key has three parts.
            ours = [rowid for rowid, key in rows if len(json.loads(key)) == 4]
            for first in range(0, len(ours), 500):
                batch = ",".join(str(int(rowid)) for rowid in ours[first : first + 500])
                self._cache._sql(
                    f"UPDATE Cache SET expire_time = store_time + ? WHERE rowid IN ({batch})",
                    (ttl,),
                )

    def ping(self) -> None:
        with self._reporting(f"the session-state store at {self.path}"):
            self._cache.get("ping")

    def close(self) -> None:
        """Close the cache; a temporary store's folder is removed with it."""
        self._cache.close()
        if self._remove_temporary is not None:
            self._remove_temporary()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        if self.read_only:
            raise StoreError(f"the session-state store at {self.path} is read-only")
        with self._reporting(f"the session-state store at {self.path}"):
            yield

    @staticmethod
    @contextmanager
    def _reporting(where: str) -> Iterator[None]:
        """SQLite and file errors as a ``StoreError`` that names the store."""
        try:
            yield
        except StoreError as exc:
            raise StoreError(f"{where}: {exc}") from exc
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            raise StoreError(f"{where}: {exc}") from exc


def _remove_temporary_store(cache: Any, folder: Path, creator_pid: int) -> None:
    """Close ``cache`` and delete the temporary ``folder`` it lives in.

    Only in the process that made it: a forked worker inherits this finalizer,
    and its exit must not take the folder from the parent still using it. A
    folder already gone (a tmp cleaner got there first) is what was wanted.
    """
    cache.close()
    if os.getpid() == creator_pid:
        with suppress(FileNotFoundError):
            shutil.rmtree(folder)
