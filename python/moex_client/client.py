"""The client of the moex controller's job and placement API (``moex serve``)."""

from __future__ import annotations

import os
import stat
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import grpc

from . import errors
from ._gen.moex.v1 import job_pb2, job_pb2_grpc, placement_pb2, placement_pb2_grpc
from .types import Job, TERMINAL_STATES, parse_spec

PathLike = Union[str, "os.PathLike[str]"]

#: Where ``moex serve`` listens by default, and ``moex job`` calls.
DEFAULT_ADDRESS = "127.0.0.1:50051"
#: Deadline of each unary call, seconds.
DEFAULT_TIMEOUT = 30.0
#: Deadline of a whole stream (``watch``, ``logs``, ``wait``), seconds.
DEFAULT_STREAM_TIMEOUT = 3600.0
# GetJob answers a job whole (a bench job with many points may pass gRPC's
# default 4 MiB); ListJobs pages stay under 3 MiB on their own.
_MAX_RECEIVE_BYTES = 64 * 1024 * 1024


def read_token_file(path: PathLike) -> str:
    """The bearer token in `path`: its first line, trailing spaces and CR removed.

    As ``moex job`` and ``moex serve`` do, a file its group or others may
    read or write is refused (``chmod 600``), and so is an empty one.

    Raises:
        ValueError: the file is open to others, or empty.
        OSError: it cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)  # of the file opened, not of whatever the path names later
        if mode & 0o077:
            raise ValueError(f"the token file '{os.fspath(path)}' is open to others (mode {mode:04o}): only its "
                             f"owner may read it; chmod 600 {os.fspath(path)}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(64 * 1024)
    finally:
        os.close(fd)
    token = data.decode("utf-8", "replace").split("\n", 1)[0].rstrip("\r ")
    if not token:
        raise ValueError(f"the token file '{os.fspath(path)}' is empty")
    return token


def _read_pem(path: PathLike, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the {what} '{os.fspath(path)}': {e.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"the {what} '{os.fspath(path)}' is not PEM (no -----BEGIN line)")
    return data


class Client:
    """A connection to a moex controller (``moex serve``).

    Args:
        address: ``host:port`` of the controller (default ``127.0.0.1:50051``).
        token: the bearer token, if the controller was started with
            ``--token-file``; sent as ``authorization: Bearer <token>`` on
            every call.
        token_file: read the token from this file instead (first line; the
            file must be its owner's alone, as for ``moex job``).
        tls: ``None`` or ``False``: plaintext; ``True``: TLS trusting the
            system's root certificates; a path: TLS trusting the CA
            certificate (PEM) in that file.
        tls_cert, tls_key: a client certificate and its key (PEM files), for
            a controller that demands them (``moex serve --tls-client-ca``,
            mutual TLS). Both or neither; they need ``tls``.
        tls_server_name: the name to check the controller's certificate
            against, when it is not the host part of `address`.
        timeout: deadline of each unary call (submit, get, a page of list,
            cancel, delete, placement, rebalance), seconds.
        stream_timeout: deadline of a whole stream (watch, wait, logs),
            seconds; each of those calls takes its own ``timeout`` too.
        options: more gRPC channel options, as ``(name, value)`` pairs.

    Every call raises a :class:`~moex_client.MoexError` subclass on failure.
    The client is a context manager; :meth:`close` closes its channel.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *, token: Optional[str] = None,
                 token_file: Optional[PathLike] = None, tls: Union[None, bool, PathLike] = None,
                 tls_cert: Optional[PathLike] = None, tls_key: Optional[PathLike] = None,
                 tls_server_name: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
                 stream_timeout: float = DEFAULT_STREAM_TIMEOUT,
                 options: Sequence[Tuple[str, Any]] = ()):
        if not isinstance(address, str) or not address:
            raise ValueError("address must be a non-empty 'host:port' string")
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token_file is not None:
            token = read_token_file(token_file)
        if token is not None and (not token or "\n" in token or "\r" in token):
            raise ValueError("token must be a non-empty string of one line")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together (a client certificate and its private key)")
        if tls_cert is not None and not tls:
            raise ValueError("tls_cert and tls_key need tls (True, or the CA file that signed the controller's "
                             "certificate)")
        for name, value in (("timeout", timeout), ("stream_timeout", stream_timeout)):
            if not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        self.address = address
        self.timeout = float(timeout)
        self.stream_timeout = float(stream_timeout)
        self._tls = bool(tls)
        self._metadata: Tuple[Tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        channel_options = [("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES)]
        if tls_server_name:
            channel_options.append(("grpc.ssl_target_name_override", tls_server_name))
        channel_options.extend(options)
        if tls:
            root = None if tls is True else _read_pem(tls, "CA certificate")
            cert = _read_pem(tls_cert, "client certificate") if tls_cert is not None else None
            key = _read_pem(tls_key, "client private key") if tls_key is not None else None
            credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                                       certificate_chain=cert)
            self._channel = grpc.secure_channel(address, credentials, options=channel_options)
        else:
            self._channel = grpc.insecure_channel(address, options=channel_options)
        self._jobs = job_pb2_grpc.JobServiceStub(self._channel)
        self._placements = placement_pb2_grpc.PlacementServiceStub(self._channel)

    @classmethod
    def from_env(cls, **overrides: Any) -> "Client":
        """A client configured as ``moex job`` is by default.

        ``$MOEX_CONTROLLER`` (else ``127.0.0.1:50051``), ``$MOEX_TOKEN_FILE``,
        ``$MOEX_TLS_CA``, ``$MOEX_TLS_CERT``, ``$MOEX_TLS_KEY``; keyword
        arguments (those of :class:`Client`) override them.
        """
        env = os.environ
        kwargs: Dict[str, Any] = {"address": env.get("MOEX_CONTROLLER") or DEFAULT_ADDRESS}
        if env.get("MOEX_TOKEN_FILE") and "token" not in overrides:
            kwargs["token_file"] = env["MOEX_TOKEN_FILE"]
        if env.get("MOEX_TLS_CA"):
            kwargs["tls"] = env["MOEX_TLS_CA"]
        if env.get("MOEX_TLS_CERT") or env.get("MOEX_TLS_KEY"):
            kwargs["tls_cert"] = env.get("MOEX_TLS_CERT")
            kwargs["tls_key"] = env.get("MOEX_TLS_KEY")
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- plumbing ---------------------------------------------------------

    def close(self) -> None:
        """Closes the channel; calls after this fail."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.address!r}, tls={self._tls}, token={'set' if self._metadata else 'none'})"

    def _deadline(self, timeout: Optional[float], default: float) -> float:
        value = default if timeout is None else timeout
        if not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise ValueError(f"timeout must be a positive number of seconds, not {value!r}")
        return float(value)

    def _error(self, error: grpc.RpcError, what: str, timeout: float) -> errors.MoexError:
        converted = errors.from_rpc_error(error, address=self.address, tls=self._tls)
        if isinstance(converted, errors.DeadlineExceeded):
            converted = errors.DeadlineExceeded(
                f"{what}: no answer from {self.address} within its deadline of {timeout:g} s "
                f"({converted.message}); pass a larger timeout", address=self.address)
        return converted

    def _unary(self, method, request, what: str, timeout: Optional[float]):
        seconds = self._deadline(timeout, self.timeout)
        try:
            return method(request, timeout=seconds, metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._error(e, what, seconds) from None

    def _stream(self, method, request, what: str, timeout: Optional[float]):
        seconds = self._deadline(timeout, self.stream_timeout)
        call = method(request, timeout=seconds, metadata=self._metadata)
        try:
            for item in call:
                yield item
        except grpc.RpcError as e:
            raise self._error(e, what, seconds) from None
        finally:
            call.cancel()  # a consumer that stops early ends the stream at the controller too

    @staticmethod
    def _job_id(job_id: Any) -> str:
        if isinstance(job_id, Job):
            return job_id.id
        if not isinstance(job_id, str):
            raise TypeError(f"a job id is a string (or a Job), not {type(job_id).__name__}")
        return job_id

    # -- JobService -------------------------------------------------------

    def submit(self, spec: Union[None, Dict[str, Any], job_pb2.JobSpec] = None, *,
               timeout: Optional[float] = None, **fields: Any) -> Job:
        """Submits a job; answers it, PENDING.

        The spec is a dict or a ``moex.v1.JobSpec``, and/or keyword
        arguments named as ``JobSpec``'s fields, which override the spec's::

            job = client.submit(name="demo", world_size=2, model="tiny", steps=3,
                                tokens_per_rank=64, check=True)
            job = client.submit({"name": "rb", "world_size": 2, "model": "tiny", "steps": 1000,
                                 "rebalance": {"policy": "eplb", "threshold": 1.2}})

        Fields left out take the controller's defaults (``docs/control-plane.md``).

        Raises:
            InvalidArgument: the controller refused the spec (the message
                names the field); or, before anything is sent, a field this
                client does not know or a value its field cannot hold.
            ResourceExhausted: the controller runs its ``--max-jobs`` already.
            FailedPrecondition: the controller's state dir is gone.
        """
        try:
            request = job_pb2.SubmitJobRequest(spec=parse_spec(spec, fields))
        except ValueError as e:
            raise errors.InvalidArgument(str(e), address=self.address) from None
        return Job(self._unary(self._jobs.SubmitJob, request, "SubmitJob", timeout))

    def get(self, job_id: str, *, timeout: Optional[float] = None) -> Job:
        """The job `job_id`, whole. Raises :class:`NotFound` for an unknown one."""
        job_id = self._job_id(job_id)
        return Job(self._unary(self._jobs.GetJob, job_pb2.GetJobRequest(id=job_id), f"GetJob {job_id}", timeout))

    def list_page(self, *, page_size: int = 0, page_token: str = "",
                  timeout: Optional[float] = None) -> Tuple[List[Job], str]:
        """One page of jobs, oldest first, and the token of the next page ("" after the last).

        `page_size` 0 is the controller's default (100); it answers at most
        1000, and fewer when a page would pass about 3 MiB.
        """
        if not isinstance(page_size, int) or page_size < 0 or page_size > 2**31 - 1:
            raise errors.InvalidArgument(f"page_size must be an integer from 0 to 2147483647, not {page_size!r}",
                                         address=self.address)
        request = job_pb2.ListJobsRequest(page_size=page_size, page_token=page_token)
        response = self._unary(self._jobs.ListJobs, request, "ListJobs", timeout)
        return [Job(job) for job in response.jobs], response.next_page_token

    def list(self, *, page_size: int = 0, timeout: Optional[float] = None) -> Iterator[Job]:
        """Every job, oldest first, fetched a page at a time (each page its own call and deadline).

        A generator: pages are fetched as it is consumed, so a controller
        with many jobs never builds one answer holding them all.
        """
        token = ""
        while True:
            jobs, token = self.list_page(page_size=page_size, page_token=token, timeout=timeout)
            yield from jobs
            if not token:
                return

    def cancel(self, job_id: str, *, timeout: Optional[float] = None) -> Job:
        """Cancels the job; answers it (a terminal job unchanged).

        The controller stops the job's processes (SIGTERM, then SIGKILL after
        its ``--cancel-grace``); :meth:`wait` for CANCELLED.
        """
        job_id = self._job_id(job_id)
        return Job(self._unary(self._jobs.CancelJob, job_pb2.CancelJobRequest(id=job_id), f"CancelJob {job_id}",
                               timeout))

    def delete(self, job_id: str, *, timeout: Optional[float] = None) -> Job:
        """Deletes an ended job's record and log; answers the job as it was.

        Raises:
            FailedPrecondition: the job has not ended (cancel it first).
            Unavailable: its final record is not on disk yet or its hosts are
                still being cleaned: retry shortly.
            NotFound: no such job.
        """
        job_id = self._job_id(job_id)
        return Job(self._unary(self._jobs.DeleteJob, job_pb2.DeleteJobRequest(id=job_id), f"DeleteJob {job_id}",
                               timeout))

    def watch(self, job_id: str, *, timeout: Optional[float] = None) -> Iterator[Job]:
        """The job now, then at every change, ending after it reaches a terminal state.

        A generator over one ``WatchJob`` stream; `timeout` (default the
        client's ``stream_timeout``) bounds the whole stream, after which it
        raises :class:`DeadlineExceeded`. Leaving the loop early ends the
        stream. Errors (``NotFound``, ...) are raised when iteration starts.
        """
        job_id = self._job_id(job_id)
        for job in self._stream(self._jobs.WatchJob, job_pb2.WatchJobRequest(id=job_id), f"WatchJob {job_id}",
                                timeout):
            yield Job(job)

    def wait(self, job_id: str, *, timeout: Optional[float] = None) -> Job:
        """Waits for the job to end (at most `timeout`, default ``stream_timeout``) and answers it.

        Raises :class:`DeadlineExceeded` if it has not ended by then; the job
        is left running.
        """
        last: Optional[Job] = None
        for last in self.watch(job_id, timeout=timeout):
            pass
        if last is None or last.proto.state not in TERMINAL_STATES:
            # The stream ended without a terminal state (the controller stopping): say what it is now.
            return self.get(job_id)
        return last

    def logs(self, job_id: str, *, follow: bool = False, timeout: Optional[float] = None) -> Iterator[bytes]:
        """The job's log (the stdout and stderr of its whole process group), as chunks of bytes.

        With `follow`, keeps streaming what is appended until the job ends
        (bounded by `timeout`, default ``stream_timeout``). See
        :meth:`log_lines` for text lines.
        """
        job_id = self._job_id(job_id)
        request = job_pb2.GetJobLogsRequest(id=job_id, follow=bool(follow))
        for chunk in self._stream(self._jobs.GetJobLogs, request, f"GetJobLogs {job_id}", timeout):
            yield chunk.data

    def log_lines(self, job_id: str, *, follow: bool = False, timeout: Optional[float] = None,
                  encoding: str = "utf-8", errors: str = "replace") -> Iterator[str]:
        """The job's log as text lines (without their newline), joined across chunks."""
        pending = b""
        for chunk in self.logs(job_id, follow=follow, timeout=timeout):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode(encoding, errors)
        if pending:
            yield pending.decode(encoding, errors)

    # -- PlacementService -------------------------------------------------

    def placement(self, job_id: str, *, timeout: Optional[float] = None) -> placement_pb2.Placement:
        """The job's newest published placement (``moex.v1.Placement``: version, slot_expert, slots_per_rank)."""
        job_id = self._job_id(job_id)
        return self._unary(self._placements.GetPlacement, placement_pb2.GetPlacementRequest(job_id=job_id),
                           f"GetPlacement {job_id}", timeout)

    def rebalance(self, job_id: str, *, policy: str = "", timeout: Optional[float] = None) -> placement_pb2.Placement:
        """Plans a placement from the job's load window and publishes it as the next version; answers it.

        `policy`: ``"refined"`` or ``"eplb"`` ("" : the job's own). The ranks
        migrate the moved experts and switch at a step boundary
        (``job.metrics.placement_version`` tells when).

        Raises:
            FailedPrecondition: the job is not RUNNING, has reported no load
                yet, is still migrating to its previous placement, or its
                slots do not divide over its ranks.
            InvalidArgument: an unknown policy.
        """
        job_id = self._job_id(job_id)
        return self._unary(self._placements.Rebalance, placement_pb2.RebalanceRequest(job_id=job_id, policy=policy),
                           f"Rebalance {job_id}", timeout)
