"""Access rules (``--acl-file``): who may register, submit and administer what, and the
tenants whose function names live in their own namespace (docs/acl.md has the format).

No I/O beyond reading the file, no trio. A connection is matched once (by its TLS
certificate identity when it has one, else by its address) and the rights it got are
kept until it closes or the file is reloaded (``Acl.reload``, on SIGHUP).

Tenants: a tenant's function ``resize`` is kept in the core under the internal name
``tenant + SEP + resize``. ``SEP`` is a control character, which no valid function name
holds (``jobs.name_problem`` refuses them), so no peer can name another tenant's
function; each name that leaves the server is turned back (``plain``, ``display``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from protocol import PacketType

from .jobs import Conn, Function, Job, name_problem

log = logging.getLogger(__name__)

#: Between a tenant's name and a function's in the core's internal function names.
SEP: Final = b"\x1f"
RIGHTS: Final = ("register", "submit", "admin-read", "admin-write")
_TENANT_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_RULE_KEYS: Final = frozenset(("address", "identity", "tenant", *RIGHTS))
_TENANT_KEYS: Final = frozenset(("max-queued-jobs", "max-queued-bytes"))
#: Refusals logged per connection: a peer retrying in a loop cannot fill the log.
LOGGED_REFUSALS: Final = 20
#: Function names remembered per right and rule (``Rights.memo``).
_MEMO: Final = 4096

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AclError(Exception):
    """The ACL file cannot be used (the message says where and why)."""


@dataclasses.dataclass(frozen=True, slots=True)
class TenantLimits:
    #: Jobs waiting (ready, scheduled or being stored) in all of the tenant's functions.
    max_jobs: int | None = None
    #: Payload bytes of the jobs ready in the tenant's queues.
    max_bytes: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Rights:
    """What one connection may do, and the rule that said so (for the logs)."""

    source: str
    tenant: str | None = None
    register: re.Pattern[bytes] | None = None
    submit: re.Pattern[bytes] | None = None
    admin_read: bool = False
    admin_write: bool = False
    #: Internal names of this tenant's functions begin with this (b"" = global).
    prefix: bytes = dataclasses.field(init=False)
    #: Names already checked (valid, and whether allowed), per right: the hot path of
    #: a submit is one lookup. Shared by the connections of the rule; bounded.
    memo: dict[str, dict[bytes, bool]] = dataclasses.field(
        init=False, compare=False, repr=False,
        default_factory=lambda: {"register": {}, "submit": {}})

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.tenant.encode() + SEP
                           if self.tenant is not None else b"")

    def allows(self, right: str, name: bytes) -> bool:
        pattern = self.register if right == "register" else self.submit
        return pattern is not None and pattern.fullmatch(name) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    identities: tuple[str, ...]
    networks: tuple[Network, ...]
    rights: Rights

    def matches(self, identity: str | None, address: ipaddress.IPv4Address
                | ipaddress.IPv6Address | None) -> bool:
        if identity is not None:
            return any(fnmatch.fnmatchcase(identity, glob) for glob in self.identities)
        return address is not None and any(address in net for net in self.networks)


@dataclasses.dataclass(frozen=True, slots=True)
class Rules:
    """One ACL file, parsed: rules in file order (the first match wins), the rights of
    everyone else, and the tenants' limits."""

    rules: tuple[Rule, ...]
    default: Rights
    tenants: Mapping[str, TenantLimits]


# ---------------------------------------------------------------------- the file


def _globs(where: str, right: str, value: object) -> re.Pattern[bytes] | None:
    """Function-name globs as one pattern (None: nothing is allowed)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise AclError(f"{where}: {right} must be a glob or a list of globs")
    if not items:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in items).encode())


def _strings(where: str, key: str, value: object) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(
            isinstance(i, str) and i for i in items):
        raise AclError(f"{where}: {key} must be a string or a non-empty list of strings")
    return items


def _rights(where: str, table: Mapping[str, object], tenants: set[str],
            source: str) -> Rights:
    tenant = table.get("tenant")
    if tenant is not None:
        if not isinstance(tenant, str) or not _TENANT_NAME.fullmatch(tenant):
            raise AclError(f"{where}: tenant must be 1-64 letters, digits, '_', '.' or '-'")
        spelled = {t.lower(): t for t in tenants}
        if tenant.lower() not in spelled:
            raise AclError(f"{where}: tenant {tenant!r} is not declared in [tenants]")
        tenant = spelled[tenant.lower()]
    flags = {}
    for key in ("admin-read", "admin-write"):
        flag = table.get(key, False)
        if not isinstance(flag, bool):
            raise AclError(f"{where}: {key} must be true or false")
        flags[key] = flag
    return Rights(source=source, tenant=tenant,
                  register=_globs(where, "register", table.get("register", [])),
                  submit=_globs(where, "submit", table.get("submit", [])),
                  admin_read=flags["admin-read"], admin_write=flags["admin-write"])


def _network(where: str, text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise AclError(f"{where}: {text!r} is not an IP address or CIDR network") from None


def parse(text: str, name: str = "ACL file") -> Rules:
    """Parse an ACL file's text; ``AclError`` names the line or rule at fault."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AclError(f"{name}: not valid TOML: {exc}") from None
    unknown = set(doc) - {"tenants", "rule", "default"}
    if unknown:
        raise AclError(f"{name}: unknown section {sorted(unknown)[0]!r} (expected [tenants], "
                       "[[rule]] and [default])")
    tenants: dict[str, TenantLimits] = {}
    declared = doc.get("tenants", {})
    if not isinstance(declared, dict):
        raise AclError(f"{name}: [tenants] must be a table of tables")
    for tenant, limits in declared.items():
        where = f"{name}: [tenants.{tenant}]"
        if not _TENANT_NAME.fullmatch(tenant):
            raise AclError(f"{where}: a tenant name is 1-64 letters, digits, '_', '.' or '-'")
        if tenant.lower() in {t.lower() for t in tenants}:
            raise AclError(f"{where}: declared twice (tenant names ignore case)")
        if not isinstance(limits, dict) or set(limits) - _TENANT_KEYS:
            raise AclError(f"{where}: only max-queued-jobs and max-queued-bytes may be set")
        values: dict[str, int | None] = {}
        for key in sorted(_TENANT_KEYS):
            value = limits.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 0):
                raise AclError(f"{where}: {key} must be a number, 0 or more")
            values[key] = value
        tenants[tenant] = TenantLimits(values["max-queued-jobs"], values["max-queued-bytes"])
    rules: list[Rule] = []
    entries = doc.get("rule", [])
    if not isinstance(entries, list):
        raise AclError(f"{name}: rules are written [[rule]]")
    for number, table in enumerate(entries, 1):
        where = f"{name}: rule {number}"
        if not isinstance(table, dict):
            raise AclError(f"{where}: rules are written [[rule]]")
        extra = set(table) - _RULE_KEYS
        if extra:
            raise AclError(f"{where}: unknown key {sorted(extra)[0]!r}")
        if "address" not in table and "identity" not in table:
            raise AclError(f"{where}: it needs an address or an identity to match")
        identities = _strings(where, "identity", table["identity"]) \
            if "identity" in table else []
        networks = [_network(where, a) for a in _strings(where, "address", table["address"])] \
            if "address" in table else []
        what = ", ".join([*(f"identity {i}" for i in identities),
                          *(f"address {n}" for n in networks)])
        rules.append(Rule(tuple(identities), tuple(networks),
                          _rights(where, table, set(tenants), f"rule {number} ({what})")))
    default = doc.get("default", {})
    if not isinstance(default, dict) or set(default) - set(RIGHTS) - {"tenant"}:
        raise AclError(f"{name}: [default] may only hold tenant, "
                       + ", ".join(RIGHTS))
    return Rules(tuple(rules), _rights(f"{name}: [default]", default, set(tenants),
                                       "the default rule"), tenants)


def load(path: str | Path) -> Rules:
    """Read and parse an ACL file (``AclError`` when it cannot be read or is wrong)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AclError(f"cannot read the ACL file {path}: {exc}") from None
    return parse(text, str(path))


# ---------------------------------------------------------------------- names


def plain(name: bytes) -> bytes:
    """A function's name as its own tenant's peers know it."""
    return name.rpartition(SEP)[2]


def display(name: bytes) -> bytes:
    """A function's name for those who see every tenant: ``tenant:name``."""
    tenant, sep, rest = name.partition(SEP)
    return tenant + b":" + rest if sep else name


def prefix_of(name: bytes) -> bytes:
    """The tenant prefix of an internal function name (b"" for a global function)."""
    tenant, sep, _ = name.partition(SEP)
    return tenant + SEP if sep else b""


class View:
    """What an admin connection sees: every function (``prefix`` None; tenants' names
    shown as ``tenant:name``) or one tenant's (their plain names)."""

    __slots__ = ("prefix", "tenants")

    def __init__(self, prefix: bytes | None, tenants: Iterable[str] = ()) -> None:
        self.prefix = prefix
        self.tenants = {t.encode() for t in tenants}

    def sees(self, name: bytes) -> bool:
        return self.prefix is None or prefix_of(name) == self.prefix

    def sees_conn(self, conn: Conn) -> bool:
        if self.prefix is None:
            return True
        return (conn.tenant.encode() + SEP if conn.tenant is not None else b"") == self.prefix

    def show(self, name: bytes) -> bytes:
        return display(name) if self.prefix is None else plain(name)

    def key(self, name: bytes) -> bytes:
        """The internal name an admin command's function argument means."""
        if self.prefix is not None:
            return self.prefix + name
        tenant, sep, rest = name.partition(b":")
        return tenant + SEP + rest if sep and tenant in self.tenants else name


#: The view of every admin connection of a server without tenants.
ALL: Final = View(None)


# ---------------------------------------------------------------------- the checks


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address as accept(2) gave it; None when unknown ("-", "internal")."""
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def who(conn: Conn) -> str:
    """The connection as the logs name it: its identity, else its address."""
    if conn.identity is not None:
        return f"connection {conn.id} (identity {conn.identity!r}, {conn.remote})"
    return f"connection {conn.id} ({conn.remote})"


class Acl:
    """The rules in force, and each connection's rights (resolved once)."""

    def __init__(self, rules: Rules, path: str | Path | None = None) -> None:
        self.path = path
        self.rules = rules
        #: connection id -> (the connection, its rights).
        self._rights: dict[int, tuple[Conn, Rights]] = {}
        #: Tenant -> internal names of its functions (for its limits): those named since
        #: the rules were loaded, and those a scan found (once, for tenants in ``_seeded``).
        self._names: dict[str, set[bytes]] = {}
        self._seeded: set[str] = set()
        #: connection id -> requests refused (logged up to ``LOGGED_REFUSALS``).
        self._refusals: dict[int, int] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> Acl:
        return cls(load(path), path)

    @property
    def has_tenants(self) -> bool:
        return bool(self.rules.tenants)

    def _resolve(self, conn: Conn) -> Rights:
        address = None if conn.identity is not None else _address(conn.address)
        for rule in self.rules.rules:
            if rule.matches(conn.identity, address):
                return rule.rights
        return self.rules.default

    def rights(self, conn: Conn) -> Rights:
        """The connection's rights; the first call fixes its tenant for its life."""
        known = self._rights.get(conn.id)
        if known is not None:
            return known[1]
        rights = self._resolve(conn)
        conn.tenant = rights.tenant
        self._rights[conn.id] = (conn, rights)
        return rights

    def forget(self, conn: Conn) -> None:
        self._rights.pop(conn.id, None)
        refused = self._refusals.pop(conn.id, 0)
        if refused > LOGGED_REFUSALS:
            log.warning("PERMISSION_DENIED %s: closed after %d refusals", who(conn),
                        refused)

    def reload(self) -> bool:
        """Read the file again (SIGHUP). A file that cannot be used keeps the old rules
        (logged); otherwise each connection's rights are resolved again. A connection
        whose tenant would change loses every right: its names live in the old one."""
        assert self.path is not None
        try:
            rules = load(self.path)
        except AclError as exc:
            log.error("ACL not reloaded, the old rules stay in force: %s", exc)
            return False
        self.rules = rules
        self._names.clear()
        self._seeded.clear()
        for conn_id, (conn, _) in list(self._rights.items()):
            rights = self._resolve(conn)
            if rights.tenant != conn.tenant:
                rights = Rights(source=f"{rights.source}, which moved it out of tenant "
                                f"{conn.tenant!r} (reconnect)", tenant=conn.tenant)
            self._rights[conn_id] = (conn, rights)
        log.warning("ACL reloaded from %s: %d rules, %d tenants", self.path,
                    len(rules.rules), len(rules.tenants))
        return True

    def deny(self, conn: Conn, rights: Rights, text: str) -> bytes:
        """Log a refusal (with who asked and the rule that applied); its text. Past
        ``LOGGED_REFUSALS`` of one connection, one more line says the rest are not."""
        count = self._refusals[conn.id] = self._refusals.get(conn.id, 0) + 1
        if count <= LOGGED_REFUSALS:
            log.warning("PERMISSION_DENIED %s by %s: %s", who(conn), rights.source, text)
        elif count == LOGGED_REFUSALS + 1:
            log.warning("PERMISSION_DENIED %s: more refusals of this connection are not "
                        "logged", who(conn))
        return text.encode()

    def key(self, conn: Conn, right: str, name: bytes, max_name: int) -> bytes | None:
        """The internal name of function ``name`` for a ``register`` or ``submit`` by
        ``conn``; None after sending it the ERROR (bad name, or not permitted)."""
        known = self._rights.get(conn.id)
        rights = known[1] if known is not None else self.rights(conn)
        memo = rights.memo[right]
        allowed = memo.get(name)
        if allowed is None:
            problem = name_problem(name, max_name)
            if problem is not None:
                conn.peer.deliver(PacketType.ERROR, *problem)
                return None
            allowed = rights.allows(right, name)
            if len(memo) >= _MEMO:
                memo.clear()
            memo[name] = allowed
        if not allowed:
            text = self.deny(conn, rights, f"no {right} right for function "
                             f"{name.decode('utf-8', 'backslashreplace')}")
            conn.peer.deliver(PacketType.ERROR, b"PERMISSION_DENIED", text)
            return None
        if rights.tenant is None:
            return name
        return rights.prefix + name

    def may_keep(self, conn: Conn, name: bytes) -> bool:
        """Whether a worker may still do internal function ``name`` (after a reload)."""
        return self.rights(conn).allows("register", plain(name))

    def admin(self, conn: Conn, right: str, server_wide: bool = False,
              log: bool = True) -> bytes | None:
        """None when ``conn`` may run an admin command needing ``right``; else the
        refusal's text (logged, unless not ``log``). ``server_wide`` commands
        (shutdown, verbose) need an identity without a tenant."""
        rights = self.rights(conn)
        allowed = rights.admin_write if right == "admin-write" else rights.admin_read
        why = None
        if allowed and server_wide and rights.tenant is not None:
            why = f"{right} of the whole server needs an identity without a tenant"
        elif not allowed:
            why = f"no {right} right"
        if why is None:
            return None
        return self.deny(conn, rights, why) if log else why.encode()

    def watch_refusal(self, conn: Conn | None, prefix: bytes | None) -> str | None:
        """After a reload: why a ``watch`` may no longer stream to ``conn`` (None: it may)."""
        if conn is None:
            return None
        if self.admin(conn, "admin-read", log=False) is not None:
            return "the reloaded rules refuse it admin-read"
        if self.view(conn).prefix != prefix:
            return "the reloaded rules show it another namespace"
        return None

    def view(self, conn: Conn) -> View:
        rights = self.rights(conn)
        return View(None if rights.tenant is None else rights.prefix, self.rules.tenants)

    def sees(self, conn: Conn, job: Job) -> bool:
        """Whether a job is in the connection's namespace (handles are server-wide)."""
        return prefix_of(job.function.name) == self.rights(conn).prefix

    def queue_full(self, conn: Conn, key: bytes, functions: Mapping[bytes, Function],
                   size: int) -> bool:
        """Whether a new job of ``size`` bytes for function ``key`` would take the
        connection's tenant past one of its limits. O(the tenant's functions); a full
        scan once per tenant and reload."""
        tenant = self.rights(conn).tenant
        limits = self.rules.tenants.get(tenant) if tenant is not None else None
        if limits is None or (limits.max_jobs is None and limits.max_bytes is None):
            return False
        assert tenant is not None
        names = self._names.setdefault(tenant, set())
        if tenant not in self._seeded:  # functions made before (replayed, registered)
            self._seeded.add(tenant)
            prefix = tenant.encode() + SEP
            names.update(n for n in functions if n.startswith(prefix))
        jobs = 0
        for name in list(names):
            fn = functions.get(name)
            if fn is None:
                names.discard(name)
                continue
            jobs += fn.queued
            size += fn.bytes_queued
        names.add(key)
        return ((limits.max_jobs is not None and jobs + 1 > limits.max_jobs)
                or (limits.max_bytes is not None and size > limits.max_bytes))
