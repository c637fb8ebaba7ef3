"""ctypes binding to Corosync 3's ``libcpg.so.4`` and ``libquorum.so.5`` (what clusterbus needs).

Layouts (corosync 3.1.7 headers, x86-64; checked by size in the unit tests):

- ``struct cpg_name { uint32_t length; char value[128]; }`` (132 bytes)
- ``struct cpg_address { uint32_t nodeid, pid, reason; }`` (12 bytes)
- ``struct cpg_ring_id { uint32_t nodeid; uint64_t seq; }`` (16 bytes, passed BY VALUE to
  the totem confchg callback); ``struct quorum_ring_id`` is the same.
- ``cpg_model_v1_data_t { int model; deliver_fn; confchg_fn; totem_confchg_fn;
  unsigned flags; }`` (40 bytes); ``quorum_model_v1_data_t { int model; quorum_notify_fn;
  nodelist_notify_fn; }`` (24 bytes).

Threading: only :meth:`Cpg.dispatch` / :meth:`Quorum.dispatch` are meant for the event loop
(``CS_DISPATCH_ALL`` on a readable fd returns at once). :meth:`~Cpg.open`, :meth:`~Cpg.leave`
and :meth:`~Cpg.close` wait on Corosync without a timeout (a stopped Corosync froze a
``cpg_leave`` for seconds): call them from a worker thread, never while a dispatch runs.

The callbacks do no work: they copy the C lists into the plain records of
:mod:`clusterbus.corosync.membership` and append them to ``records``; the caller takes them
after ``dispatch`` returns. A ctypes callback cannot raise (ctypes prints and swallows the
exception), so anything odd becomes a :class:`~clusterbus.corosync.membership.BadCallback`
record instead.
"""

from __future__ import annotations

import ctypes
import logging
from ctypes import POINTER, Structure, byref, c_char, c_int, c_size_t, c_uint, c_uint32, c_uint64
from typing import Any

from ..errors import ClusterbusError
from .membership import (
    BadCallback,
    CpgAddress,
    GroupConfchg,
    QuorumNotify,
    Record,
    TotemConfchg,
)

__all__ = [
    "CorosyncError",
    "Cpg",
    "Quorum",
    "CS_OK",
    "CS_ERR_LIBRARY",
    "CS_ERR_TRY_AGAIN",
    "CS_ERR_BAD_HANDLE",
    "CS_ERR_EXIST",
    "MAX_ENTRIES",
    "CpgName",
    "CpgAddressC",
    "CpgRingId",
    "CpgModelV1Data",
    "QuorumModelV1Data",
]

log = logging.getLogger(__name__)

# corotypes.h
CS_OK = 1
CS_ERR_LIBRARY = 2
CS_ERR_TRY_AGAIN = 6
CS_ERR_BAD_HANDLE = 9
CS_ERR_EXIST = 14
CS_DISPATCH_ALL = 2
CS_TRACK_CURRENT = 0x01
CS_TRACK_CHANGES = 0x02
# cpg.h / quorum.h
CPG_MODEL_V1 = 1
CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF = 0x01
QUORUM_MODEL_V1 = 1
QUORUM_SET = 1
CPG_MAX_NAME_LENGTH = 128

#: More entries than this in one callback list is not a real cluster (Corosync's own limit
#: is a few hundred nodes): the callback becomes a BadCallback record.
MAX_ENTRIES = 65536

_CS_NAMES = {1: "CS_OK", 2: "CS_ERR_LIBRARY", 3: "CS_ERR_VERSION", 4: "CS_ERR_INIT",
             5: "CS_ERR_TIMEOUT", 6: "CS_ERR_TRY_AGAIN", 7: "CS_ERR_INVALID_PARAM",
             8: "CS_ERR_NO_MEMORY", 9: "CS_ERR_BAD_HANDLE", 10: "CS_ERR_BUSY",
             11: "CS_ERR_ACCESS", 12: "CS_ERR_NOT_EXIST", 13: "CS_ERR_NAME_TOO_LONG",
             14: "CS_ERR_EXIST", 15: "CS_ERR_NO_SPACE", 16: "CS_ERR_INTERRUPT",
             17: "CS_ERR_NAME_NOT_FOUND", 18: "CS_ERR_NO_RESOURCES",
             19: "CS_ERR_NOT_SUPPORTED", 20: "CS_ERR_BAD_OPERATION",
             21: "CS_ERR_FAILED_OPERATION", 22: "CS_ERR_MESSAGE_ERROR",
             23: "CS_ERR_QUEUE_FULL", 24: "CS_ERR_QUEUE_NOT_AVAILABLE",
             25: "CS_ERR_BAD_FLAGS", 26: "CS_ERR_TOO_BIG", 27: "CS_ERR_NO_SECTIONS",
             28: "CS_ERR_CONTEXT_NOT_FOUND", 30: "CS_ERR_TOO_MANY_GROUPS",
             100: "CS_ERR_SECURITY"}


class CorosyncError(ClusterbusError):
    """A libcpg/libquorum call failed, or the library is missing.

    :param call: the C function (``cpg_join``) or ``load``.
    :param code: its ``cs_error_t`` (0 when the library could not be loaded).
    """

    def __init__(self, call: str, code: int, detail: str = "") -> None:
        self.call = call
        self.code = code
        name = _CS_NAMES.get(code, f"error {code}")
        super().__init__(f"{call}: {detail or name}")


# -- layouts ----------------------------------------------------------------------------


class CpgName(Structure):
    _fields_ = [("length", c_uint32), ("value", c_char * CPG_MAX_NAME_LENGTH)]


class CpgAddressC(Structure):
    _fields_ = [("nodeid", c_uint32), ("pid", c_uint32), ("reason", c_uint32)]


class CpgRingId(Structure):
    _fields_ = [("nodeid", c_uint32), ("seq", c_uint64)]


QuorumRingId = CpgRingId  # struct quorum_ring_id has the same layout

_handle_p = POINTER(c_uint64)
DeliverFn = ctypes.CFUNCTYPE(None, c_uint64, POINTER(CpgName), c_uint32, c_uint32,
                             ctypes.c_void_p, c_size_t)
ConfchgFn = ctypes.CFUNCTYPE(None, c_uint64, POINTER(CpgName),
                             POINTER(CpgAddressC), c_size_t,
                             POINTER(CpgAddressC), c_size_t,
                             POINTER(CpgAddressC), c_size_t)
TotemConfchgFn = ctypes.CFUNCTYPE(None, c_uint64, CpgRingId, c_uint32, POINTER(c_uint32))
QuorumNotifyFn = ctypes.CFUNCTYPE(None, c_uint64, c_uint32, QuorumRingId, c_uint32,
                                  POINTER(c_uint32))
NodelistNotifyFn = ctypes.CFUNCTYPE(None, c_uint64, QuorumRingId,
                                    c_uint32, POINTER(c_uint32),
                                    c_uint32, POINTER(c_uint32),
                                    c_uint32, POINTER(c_uint32))


class CpgModelV1Data(Structure):
    _fields_ = [("model", c_int), ("cpg_deliver_fn", DeliverFn),
                ("cpg_confchg_fn", ConfchgFn), ("cpg_totem_confchg_fn", TotemConfchgFn),
                ("flags", c_uint)]


class QuorumModelV1Data(Structure):
    _fields_ = [("model", c_int), ("quorum_notify_fn", QuorumNotifyFn),
                ("nodelist_notify_fn", NodelistNotifyFn)]


# -- libraries --------------------------------------------------------------------------

_libs: dict[str, Any] = {}


def _lib(soname: str, package: str) -> Any:
    lib = _libs.get(soname)
    if lib is not None:
        return lib
    try:
        lib = ctypes.CDLL(soname)
    except OSError as exc:
        raise CorosyncError("load", 0, f"cannot load {soname} ({exc}); install the Debian "
                            f"package {package}") from None
    u64, u32p, intp = c_uint64, POINTER(c_uint32), POINTER(c_int)
    if soname.startswith("libcpg"):
        protos: dict[str, list[Any]] = {
            "cpg_model_initialize": [_handle_p, c_int, POINTER(CpgModelV1Data), ctypes.c_void_p],
            "cpg_fd_get": [u64, intp],
            "cpg_dispatch": [u64, c_int],
            "cpg_join": [u64, POINTER(CpgName)],
            "cpg_leave": [u64, POINTER(CpgName)],
            "cpg_finalize": [u64],
            "cpg_local_get": [u64, POINTER(c_uint)],
        }
    else:
        protos = {
            "quorum_model_initialize": [_handle_p, c_int, POINTER(QuorumModelV1Data), u32p,
                                        ctypes.c_void_p],
            "quorum_fd_get": [u64, intp],
            "quorum_dispatch": [u64, c_int],
            "quorum_getquorate": [u64, intp],
            "quorum_trackstart": [u64, c_uint],
            "quorum_finalize": [u64],
        }
    for name, argtypes in protos.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = c_int
    _libs[soname] = lib
    return lib


def _check(call: str, code: int) -> None:
    if code != CS_OK:
        raise CorosyncError(call, code)


def _u32_list(ptr: Any, n: int) -> tuple[int, ...]:
    return tuple(ptr[i] for i in range(n)) if n else ()


def _addr_list(ptr: Any, n: int) -> tuple[CpgAddress, ...]:
    return tuple(CpgAddress(nodeid=ptr[i].nodeid, pid=ptr[i].pid, reason=ptr[i].reason)
                 for i in range(n)) if n else ()


def cpg_name(group: str) -> CpgName:
    """A ``struct cpg_name`` for ``group``.

    :raises CorosyncError: longer than 128 bytes in UTF-8.
    """
    raw = group.encode()
    if not raw or len(raw) > CPG_MAX_NAME_LENGTH:
        raise CorosyncError("cpg_name", 13, f"group name must be 1..{CPG_MAX_NAME_LENGTH} bytes")
    return CpgName(length=len(raw), value=raw)


class Cpg:
    """One CPG connection that joins one group.

    :param group: the CPG group name.

    After :meth:`open`: ``fd`` (poll it for reading), ``local_nodeid``. ``records`` holds
    what the callbacks delivered during :meth:`dispatch` (take them with :meth:`take`).
    """

    def __init__(self, group: str) -> None:
        self.group = group
        self._name = cpg_name(group)
        self.handle = c_uint64(0)
        self.fd = -1
        self.local_nodeid = 0
        self.records: list[Record] = []
        self.opened = False
        # ctypes callbacks must outlive the handle: kept on the instance
        self._deliver = DeliverFn(self._on_deliver)
        self._confchg = ConfchgFn(self._on_confchg)
        self._totem = TotemConfchgFn(self._on_totem)
        self._model = CpgModelV1Data(model=CPG_MODEL_V1, cpg_deliver_fn=self._deliver,
                                     cpg_confchg_fn=self._confchg,
                                     cpg_totem_confchg_fn=self._totem,
                                     flags=CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF)

    # blocking: worker thread only
    def open(self) -> None:
        """Initialize, join the group, get the fd and the local node id (blocking).

        :raises CorosyncError: a call failed (the handle is finalized again).
        """
        lib = _lib("libcpg.so.4", "libcpg4")
        _check("cpg_model_initialize",
               lib.cpg_model_initialize(byref(self.handle), CPG_MODEL_V1, byref(self._model),
                                        None))
        self.opened = True
        try:
            fd = c_int(-1)
            _check("cpg_fd_get", lib.cpg_fd_get(self.handle, byref(fd)))
            local = c_uint(0)
            _check("cpg_local_get", lib.cpg_local_get(self.handle, byref(local)))
            _check("cpg_join", lib.cpg_join(self.handle, byref(self._name)))
        except CorosyncError:
            self.close()
            raise
        self.fd = fd.value
        self.local_nodeid = local.value

    def dispatch(self) -> int:
        """``cpg_dispatch(CS_DISPATCH_ALL)``: runs the callbacks; returns the ``cs_error_t``."""
        code: int = _lib("libcpg.so.4", "libcpg4").cpg_dispatch(self.handle, CS_DISPATCH_ALL)
        return code

    def take(self) -> list[Record]:
        """The records delivered since the last call."""
        out, self.records = self.records, []
        return out

    # blocking: worker thread only
    def leave(self) -> int:
        """``cpg_leave`` (blocking); returns the ``cs_error_t``."""
        code: int = _lib("libcpg.so.4", "libcpg4").cpg_leave(self.handle, byref(self._name))
        return code

    # blocking: worker thread only
    def close(self) -> int:
        """``cpg_finalize`` (frees the handle even when Corosync is gone); idempotent."""
        if not self.opened:
            return CS_OK
        self.opened = False
        self.fd = -1
        code: int = _lib("libcpg.so.4", "libcpg4").cpg_finalize(self.handle)
        return code

    # -- callbacks (on the dispatching thread) -------------------------------------------

    def _on_deliver(self, handle: int, group: Any, nodeid: int, pid: int, msg: Any,
                    size: int) -> None:
        pass  # clusterbus sends nothing through CPG

    def _on_confchg(self, handle: int, group: Any, members: Any, n_members: int,
                    left: Any, n_left: int, joined: Any, n_joined: int) -> None:
        try:
            if max(n_members, n_left, n_joined) > MAX_ENTRIES:
                self.records.append(BadCallback(what="confchg.too_many_entries"))
                return
            g = group.contents
            name = bytes(g.value[:min(g.length, CPG_MAX_NAME_LENGTH)]).decode(errors="replace")
            self.records.append(GroupConfchg(group=name,
                                             members=_addr_list(members, n_members),
                                             left=_addr_list(left, n_left),
                                             joined=_addr_list(joined, n_joined)))
        except Exception:  # never into ctypes: it would print and drop it
            log.exception("cpg confchg callback")
            self.records.append(BadCallback(what="confchg.exception"))

    def _on_totem(self, handle: int, ring_id: Any, n_members: int, members: Any) -> None:
        try:
            if n_members > MAX_ENTRIES:
                self.records.append(BadCallback(what="totem.too_many_entries"))
                return
            self.records.append(TotemConfchg(ring_seq=ring_id.seq,
                                             members=_u32_list(members, n_members)))
        except Exception:
            log.exception("cpg totem confchg callback")
            self.records.append(BadCallback(what="totem.exception"))


class Quorum:
    """One libquorum connection tracking the quorate flag (``QUORUM_MODEL_V1``).

    After :meth:`open`: ``fd``, ``quorate`` (the flag when tracking started) and
    ``provider`` (False: no quorum provider configured, Corosync then says quorate).
    """

    def __init__(self) -> None:
        self.handle = c_uint64(0)
        self.fd = -1
        self.quorate = False
        self.provider = False
        self.records: list[Record] = []
        self.opened = False
        self._notify = QuorumNotifyFn(self._on_quorum)
        self._nodelist = NodelistNotifyFn(self._on_nodelist)
        self._model = QuorumModelV1Data(model=QUORUM_MODEL_V1, quorum_notify_fn=self._notify,
                                        nodelist_notify_fn=self._nodelist)

    # blocking: worker thread only
    def open(self) -> None:
        """Initialize, get the fd and the flag, start tracking changes (blocking).

        :raises CorosyncError: a call failed (the handle is finalized again).
        """
        lib = _lib("libquorum.so.5", "libquorum5")
        qtype = c_uint32(0)
        _check("quorum_model_initialize",
               lib.quorum_model_initialize(byref(self.handle), QUORUM_MODEL_V1,
                                           byref(self._model), byref(qtype), None))
        self.opened = True
        try:
            fd, quorate = c_int(-1), c_int(0)
            _check("quorum_fd_get", lib.quorum_fd_get(self.handle, byref(fd)))
            _check("quorum_getquorate", lib.quorum_getquorate(self.handle, byref(quorate)))
            _check("quorum_trackstart",
                   lib.quorum_trackstart(self.handle, CS_TRACK_CURRENT | CS_TRACK_CHANGES))
        except CorosyncError:
            self.close()
            raise
        self.fd = fd.value
        self.quorate = bool(quorate.value)
        self.provider = qtype.value == QUORUM_SET

    def dispatch(self) -> int:
        """``quorum_dispatch(CS_DISPATCH_ALL)``; returns the ``cs_error_t``."""
        code: int = _lib("libquorum.so.5", "libquorum5").quorum_dispatch(self.handle,
                                                                          CS_DISPATCH_ALL)
        return code

    def take(self) -> list[Record]:
        """The records delivered since the last call."""
        out, self.records = self.records, []
        return out

    # blocking: worker thread only
    def close(self) -> int:
        """``quorum_finalize``; idempotent."""
        if not self.opened:
            return CS_OK
        self.opened = False
        self.fd = -1
        code: int = _lib("libquorum.so.5", "libquorum5").quorum_finalize(self.handle)
        return code

    def _on_quorum(self, handle: int, quorate: int, ring_id: Any, n_members: int,
                   members: Any) -> None:
        try:
            if n_members > MAX_ENTRIES:
                self.records.append(BadCallback(what="quorum.too_many_entries"))
                return
            self.records.append(QuorumNotify(quorate=bool(quorate),
                                             members=_u32_list(members, n_members)))
        except Exception:
            log.exception("quorum notify callback")
            self.records.append(BadCallback(what="quorum.exception"))

    def _on_nodelist(self, handle: int, ring_id: Any, n_members: int, members: Any,
                     n_joined: int, joined: Any, n_left: int, left: Any) -> None:
        pass  # node membership comes from CPG's totem callback
