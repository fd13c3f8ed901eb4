"""Errors of the moex client: one class per gRPC status code.

Every failed call raises a subclass of :class:`MoexError` carrying the
controller's own message (``message``) and the gRPC code (``code``), e.g.
``NotFound("no job 'j-1'")`` or ``InvalidArgument("spec.world_size is 99;
this controller allows 1 to 64")``. Catch :class:`MoexError` for any failure,
or a subclass for one kind::

    try:
        client.get("j-missing")
    except moex_client.NotFound as e:
        print(e.message)
"""

from __future__ import annotations

from typing import Dict, Optional, Type

import grpc


class MoexError(Exception):
    """A call to the controller failed.

    Attributes:
        code: the ``grpc.StatusCode`` of the failure.
        message: the controller's message (or, for a failure of the client
            itself, the client's), in words a user can act on.
        address: the controller's address the call went to, if known.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, code: Optional[grpc.StatusCode] = None, address: Optional[str] = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.address = address

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class Cancelled(MoexError):
    """The call was cancelled (by the client, or the stream was closed)."""
    code = grpc.StatusCode.CANCELLED


class Unknown(MoexError):
    """The controller failed without saying how (gRPC UNKNOWN)."""
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(MoexError):
    """A request was refused as invalid: the message names the field (``spec.name``, ``page_token``)."""
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(MoexError):
    """The call's deadline passed before the controller answered (see the ``timeout`` arguments)."""
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(MoexError):
    """No such job (never submitted, deleted, or removed by retention)."""
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MoexError):
    """What the call would create exists already."""
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(MoexError):
    """The caller is known but may not make this call (e.g. a rank call without the job's rank secret)."""
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(MoexError):
    """A limit was reached: ``moex serve --max-jobs`` active jobs, ``--max-streams``, a message size."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(MoexError):
    """The job (or controller) is not in a state that allows the call.

    E.g. deleting a job that has not ended, rebalancing a job that is not
    RUNNING or has reported no load yet, or a controller whose state dir
    was removed.
    """
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(MoexError):
    """The call was aborted by a concurrent change (gRPC ABORTED)."""
    code = grpc.StatusCode.ABORTED


class OutOfRange(MoexError):
    """A value was past its valid range (gRPC OUT_OF_RANGE)."""
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(MoexError):
    """The controller does not implement this call (an older ``moex serve``?)."""
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(MoexError):
    """The controller hit an internal error (its stderr says more)."""
    code = grpc.StatusCode.INTERNAL


class Unavailable(MoexError):
    """The controller could not be reached, or asks to retry later.

    Nothing listens at the address, TLS does not match (a TLS controller
    closes a plaintext connection), or the controller is busy with the job
    (``DeleteJob`` while the job's hosts are still being cleaned): retrying
    later may succeed.
    """
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(MoexError):
    """Unrecoverable loss of data (gRPC DATA_LOSS)."""
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(MoexError):
    """The controller wants a bearer token the call did not carry, or carried another one."""
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: Dict[grpc.StatusCode, Type[MoexError]] = {
    cls.code: cls
    for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists, PermissionDenied,
                ResourceExhausted, FailedPrecondition, Aborted, OutOfRange, Unimplemented, Internal, Unavailable,
                DataLoss, Unauthenticated)
}


def error_class(code: grpc.StatusCode) -> Type[MoexError]:
    """The :class:`MoexError` subclass for a gRPC status code (:class:`MoexError` itself for one without)."""
    return _BY_CODE.get(code, MoexError)


def _unavailable_hint(details: str, address: Optional[str], tls: bool) -> str:
    """What to check when the controller could not be reached, as `moex job` says it."""
    lower = details.lower()
    where = address or "the controller"
    if tls and "wrong version number" in lower:
        return (f"the TLS handshake with {where} failed ({details}): the controller there answered in plaintext; "
                "does it serve TLS (moex serve --tls-cert, --tls-key)? If not, leave tls out")
    if any(word in lower for word in ("handshake", "ssl", "tls")):
        return (f"the TLS handshake with {where} failed ({details}): "
                + ("is `tls` the CA that signed the controller's certificate, and does the controller demand a "
                   "client certificate (tls_cert, tls_key)?" if tls
                   else "the controller there serves TLS; pass tls=True or tls='ca.pem'"))
    if any(word in lower for word in ("socket closed", "connection reset", "end of file", "eof")):
        return (f"the connection to {where} failed: something listens there but closed it ({details}); "
                + ("a controller that demands client certificates (mutual TLS) does so to a client without "
                   "tls_cert and tls_key" if tls
                   else "a controller that serves TLS does so to a plaintext client; pass tls=True or tls='ca.pem'"))
    if "connection refused" in lower or "failed to connect" in lower:
        return f"no controller at {where} ({details})"
    return details


def from_rpc_error(error: grpc.RpcError, *, address: Optional[str] = None, tls: bool = False) -> MoexError:
    """Converts a ``grpc.RpcError`` (of a unary call or a stream) into its :class:`MoexError`."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    if code == grpc.StatusCode.UNAVAILABLE:
        details = _unavailable_hint(details, address, tls)
    cls = error_class(code)
    return cls(details, code=code, address=address)
