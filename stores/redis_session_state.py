"""Per-session state on a Redis-protocol server, shared by every replica of a proxy.

Same semantics as the diskcache ``SessionStateStore`` (the ids are checked and
the state encoded by the same functions): JSON text only, never a pickle; one
value per tenant and session; a write replaces it whole. Keys are
``ctxproto:{namespace}:state:{tenant}:{session}`` with both ids
percent-encoded, so an id holding ``:`` (or any other byte) can never make two
tenants' keys meet: ``("a:b", "c")`` and ``("a", "b:c")`` encode to different
keys. Each tenant has a set of its session ids beside them, so listing a
tenant's sessions reads one key instead of scanning the server, and never
matches another tenant's ids by pattern.

A ``put`` or ``delete`` changes the value and the set in one ``MULTI``/``EXEC``
transaction: a reader sees both or neither, and a replica killed mid-write
leaves the previous state. An ``update`` reads under ``WATCH`` and writes in
that transaction, again from the start if another replica wrote the key in
between, so two replicas appending to one session both keep their turn. What
``EXEC`` acknowledged is as durable as the server is configured to make it
(``appendonly yes`` with ``appendfsync always`` loses nothing acknowledged;
see docs/deploy.md).

An ``update`` is applied once even when the connection drops after the
server ran its ``EXEC`` and before the reply arrived: redis-py reports that
as a ``WatchError`` (the key was watched), and ``transaction()`` would run
the change again on a state that already holds it, appending a turn twice.
Each ``update`` writes a random token to the session's list of recent
updates (``ctxproto:{namespace}:updates:{tenant}:{session}``, the last
``RECENT_UPDATES``) in its transaction, and a run after the first that finds
its token there returns what the applied run wrote instead of applying the
change again. The list expires ``UPDATES_TTL_MS`` after the session's last
update: a retry comes within a second, and a list kept for ever would hold
about a kilobyte per session that a ``volatile-*`` ``maxmemory-policy`` cannot
evict. With the shortest TTL of all, the list is the first key ``volatile-ttl``
evicts under memory pressure, and a retry would then apply its update twice:
docs/deploy.md asks for ``volatile-lru``, under which a list a retry is about to
read, written a moment ago, is the last to go.

With ``idle_ttl_s``, each write sets the session's keys to expire that long
after it (``PX`` on the state, ``PEXPIRE`` on its list of recent updates, never
outliving the state, and on the tenant's set of session ids, which so lives as
long as the tenant's latest session) in the same transaction, so a session
idle past the TTL is gone from the server with nothing left behind. The set
still names the sessions that expired while the tenant stayed busy: a listing
leaves out, and removes from the set, the ids whose state is gone, and so does a
write for a sample of the set's ids (``_LIVE_IDS``, one script, so a write of
that session in between is never undone), as Redis samples keys to expire; a
tenant sending a new session id per request keeps its set to about as many ids
again as it has live sessions.

The set may expire only when none of its sessions outlives it. Keys written
without a TTL (before one was configured) have no expiry, and the first write
with the TTL gave their tenant's set one: the set went when the tenant idled,
and the old sessions, still read, were left out of every listing for good. So a
store opened with a TTL first gives each of its namespace's state keys and sets
that has no expiry one TTL from then (``_EXPIRE_PERSISTENT``, one key at a time,
checked and set atomically, so a write in between keeps its own expiry); and a
write without a TTL clears the set's expiry (``PERSIST``) in its transaction, as
its state never expires. A store opened without a TTL still lists only the ids
whose state exists (sessions written under a TTL before it was turned off
expire), checking them with ``EXISTS`` and running no script: a server or ACL
user without scripting serves a store without a TTL, as it did before TTLs.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any

from ctxproto.stores.redis_connection import RedisConnection, glob_escape, key_part
from ctxproto.stores.session_state import check_idle_ttl, check_ids, decode_state, encode_state
from ctxproto.stores.storable_text import unstorable
from ctxproto.stores.store_url import redact_url

__all__ = ["RedisSessionStateStore"]

RECENT_UPDATES = 32
"""How many of a session's latest updates are remembered: an update whose reply was
lost is recognised while fewer other updates of the session ran before its retry,
which comes within a second."""

UPDATES_TTL_MS = 60_000
"""How long a session's list of recent updates outlives its last update: far longer
than a retry takes (a second), short enough that idle sessions hold none."""


SAMPLED_IDS = 3
"""Ids of the tenant's set each write checks (with an idle TTL), removing those whose
state expired: more than the one id a write adds, so the expired ones cannot pile up."""

_LIVE_IDS = """
-- KEYS[1]: a tenant's set of session ids; ARGV[1]: the prefix of its state keys;
-- ARGV[2]: how many ids to sample from the set, or 0 to check ARGV[3], ARGV[4], ...
-- Removes the checked ids whose state key is gone; returns the others.
local ids
if tonumber(ARGV[2]) > 0 then
  ids = redis.call('SRANDMEMBER', KEYS[1], ARGV[2])
else
  ids = {unpack(ARGV, 3)}
end
local live = {}
for _, id in ipairs(ids) do
  -- key_part: percent-encoded as Python's quote(id, safe='') does
  local part = (string.gsub(id, '[^%w_.~-]', function(c)
    return string.format('%%%02X', string.byte(c))
  end))
  if redis.call('EXISTS', ARGV[1] .. part) == 1 then
    live[#live + 1] = id
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return live
"""


_EXPIRE_PERSISTENT = """
-- KEYS[1]: a key; ARGV[1]: milliseconds. Gives the key that expiry if it has none.
if redis.call('PTTL', KEYS[1]) == -1 then
  return redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 0
"""


class RedisSessionStateStore:
    """JSON state per ``(tenant_id, session_id)`` on the server at ``url``."""

    def __init__(
        self, url: str, *, namespace: str = "sessions", idle_ttl_s: float | None = None
    ) -> None:
        self.url = redact_url(url)
        self.idle_ttl_s = check_idle_ttl(idle_ttl_s)
        self._ttl_ms = (
            None if self.idle_ttl_s is None else max(math.ceil(self.idle_ttl_s * 1000), 1)
        )
        self.read_only = False
        self._location = url
        self.namespace = namespace
        self._prefix = f"ctxproto:{key_part(namespace)}"
        self._connection = RedisConnection(url)
        self._redis = self._connection.client
        if self._ttl_ms is not None:
            self._expire_persistent(self._ttl_ms)

    @property
    def location(self) -> str:
        return self._location

    def key(self, tenant_id: str, session_id: str) -> str:
        """Where this session's state lives on the server."""
        check_ids(tenant_id, session_id)
        return f"{self._state_prefix(tenant_id)}{key_part(session_id)}"

    def _state_prefix(self, tenant_id: str) -> str:
        return f"{self._prefix}:state:{key_part(tenant_id)}:"

    def _index(self, tenant_id: str) -> str:
        return f"{self._prefix}:sessions:{key_part(tenant_id)}"

    def _updates(self, tenant_id: str, session_id: str) -> str:
        """The tokens of this session's latest updates (see the module docstring)."""
        return f"{self._prefix}:updates:{key_part(tenant_id)}:{key_part(session_id)}"

    def get(self, tenant_id: str, session_id: str) -> dict[str, Any] | None:
        """The state stored for this tenant's session, or ``None``."""
        key = self.key(tenant_id, session_id)
        where = f"session state of tenant '{tenant_id}' session '{session_id}'"
        with self._connection.reporting(f"cannot read {where}"):
            raw = self._redis.get(key)
        return None if raw is None else decode_state(raw, f"{where} at {self.url}")

    def put(self, tenant_id: str, session_id: str, state: dict[str, Any]) -> None:
        """Replace this session's state, atomically; ``state`` must be JSON-serializable."""
        key = self.key(tenant_id, session_id)
        text = encode_state(tenant_id, session_id, state)
        where = f"session state of tenant '{tenant_id}' session '{session_id}'"
        with self._connection.reporting(f"cannot write {where}"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.set(key, text.encode("utf-8"), px=self._ttl_ms)
            self._index_written(pipe, tenant_id, session_id)
            pipe.execute()

    def update(
        self,
        tenant_id: str,
        session_id: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any]],
    ) -> dict[str, Any]:
        """Replace this session's state with ``change(state)``, with no write between.

        A ``get`` then a ``put`` lets two replicas read the same state, and the
        second write drops what the first added. ``change`` may run more than
        once (once more per write it lost to): keep it a pure function of the
        state. Returns the new state.
        """
        key = self.key(tenant_id, session_id)
        updates = self._updates(tenant_id, session_id)
        token = uuid.uuid4().hex.encode("ascii")
        where = f"session state of tenant '{tenant_id}' session '{session_id}'"
        written: list[dict[str, Any]] = []

        def write(pipe: Any) -> dict[str, Any]:
            """Runs again from the start when another writer changed ``key`` first, or
            when the connection dropped around ``EXEC``: then this update may be in."""
            raw = pipe.get(key)
            if written and token in pipe.lrange(updates, 0, -1):
                pipe.multi()  # already applied: an empty transaction
                return written[-1]
            state = change(None if raw is None else decode_state(raw, f"{where} at {self.url}"))
            text = encode_state(tenant_id, session_id, state)
            pipe.multi()
            pipe.set(key, text.encode("utf-8"), px=self._ttl_ms)
            self._index_written(pipe, tenant_id, session_id)
            pipe.lpush(updates, token)
            pipe.ltrim(updates, 0, RECENT_UPDATES - 1)
            pipe.pexpire(updates, min(UPDATES_TTL_MS, self._ttl_ms or UPDATES_TTL_MS))
            written.append(state)
            return state

        client: Any = self._redis  # redis-py types the callable as returning nothing
        with self._connection.reporting(f"cannot write {where}"):
            new: dict[str, Any] = client.transaction(write, key, value_from_callable=True)
        return new

    def _index_written(self, pipe: Any, tenant_id: str, session_id: str) -> None:
        """Queue, in the write's transaction after its state, the tenant's set naming the
        session; with a TTL, its expiry renewed and a sample of its expired ids dropped;
        without, its expiry cleared, since this session's state now never expires."""
        index = self._index(tenant_id)
        pipe.sadd(index, session_id.encode("utf-8"))
        if self._ttl_ms is None:
            pipe.persist(index)
        else:
            pipe.pexpire(index, self._ttl_ms)
            pipe.eval(_LIVE_IDS, 1, index, self._state_prefix(tenant_id), SAMPLED_IDS)

    def _expire_persistent(self, ttl_ms: int) -> None:
        """Give this namespace's state keys and sets that have no expiry ``ttl_ms`` (see
        the module docstring). One ``SCAN`` of the server for the namespace's keys, once
        per store opened: the server walks every key it holds for it (about 0.4 s per
        million), so not one for each kind of key, which took twice that."""
        kinds = tuple(f"{self._prefix}:{kind}:".encode() for kind in ("state", "sessions"))
        pipe = self._redis.pipeline(transaction=False)
        with self._connection.reporting("cannot give stored sessions the idle TTL"):
            pattern = f"{glob_escape(self._prefix)}:*"
            for key in self._redis.scan_iter(match=pattern, count=1000):
                if bytes(key).startswith(kinds):  # a list of recent updates always expires
                    pipe.eval(_EXPIRE_PERSISTENT, 1, key, ttl_ms)
                    if len(pipe) >= 1000:
                        pipe.execute()
            pipe.execute()

    def delete(self, tenant_id: str, session_id: str) -> bool:
        """Forget a session; ``True`` when it existed."""
        key = self.key(tenant_id, session_id)
        with self._connection.reporting(f"cannot delete session '{session_id}'"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(key)
            pipe.delete(self._updates(tenant_id, session_id))
            pipe.srem(self._index(tenant_id), session_id.encode("utf-8"))
            removed, _, _ = pipe.execute()
        return bool(removed)

    def sessions(self, tenant_id: str, prefix: str = "") -> list[str]:
        """The session ids this tenant has state for that start with ``prefix``.

        The server matches them in the tenant's index set (``SSCAN ... MATCH``),
        so only the ids wanted cross the network. A ``prefix`` that is not valid
        Unicode (a lone surrogate) starts no id, as ``check_ids`` refuses every
        such id: none, as the diskcache store finds, where encoding it for the
        pattern raised a bare ``UnicodeEncodeError``.
        """
        check_ids(tenant_id, "listing")
        if unstorable(prefix):
            return []
        pattern = glob_escape(prefix).encode("utf-8") + b"*"
        index = self._index(tenant_id)
        with self._connection.reporting(f"cannot list the sessions of tenant '{tenant_id}'"):
            members = [
                m.decode("utf-8") if isinstance(m, bytes) else str(m)
                for m in self._redis.sscan_iter(index, match=pattern, count=1000)
            ]
            live = self._live_ids(tenant_id, members)
        return sorted(set(live))

    def _live_ids(self, tenant_id: str, ids: list[str]) -> list[str]:
        """Those of the tenant's ``ids`` whose state exists: with a TTL, and after one was
        turned off, the set still names the sessions that expired under it.

        With a TTL, the expired ids go from the set too (``_LIVE_IDS``). Without one,
        the listing only reads (``EXISTS``, pipelined): it ran that script on every
        listing, so a server or ACL user without scripting (``-@scripting``), which a
        store without a TTL never needed, failed every ``sessions`` call. The ids it
        skips stay in the set until a write under a TTL samples them.
        """
        live: list[str] = []
        for first in range(0, len(ids), 1000):
            batch = ids[first : first + 1000]
            if self._ttl_ms is not None:
                found = self._redis.eval(
                    _LIVE_IDS, 1, self._index(tenant_id), self._state_prefix(tenant_id), 0, *batch
                )
                live += [m.decode("utf-8") if isinstance(m, bytes) else str(m) for m in found]
            else:
                pipe = self._redis.pipeline(transaction=False)
                for session_id in batch:
                    pipe.exists(f"{self._state_prefix(tenant_id)}{key_part(session_id)}")
                live += [i for i, exists in zip(batch, pipe.execute(), strict=True) if exists]
        return live

    def ping(self) -> None:
        self._connection.ping()

    def close(self) -> None:
        self._connection.close()
