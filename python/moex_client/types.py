"""Typed views of the controller's messages: :class:`Job`, :class:`JobState`, :class:`EndReason`.

The controller answers protobuf messages (``moex.v1.Job``, ...). :class:`Job`
wraps one with typed, documented properties for what a client usually reads
(state, end reason, metrics) and lets every other field through unchanged
(``job.attempts``, ``job.load``, ``job.rebalances``, ...); ``job.proto`` is
the message itself.
"""

from __future__ import annotations

import enum
from typing import Any, Dict, Union

from google.protobuf import json_format

from ._gen.moex.v1 import job_pb2, placement_pb2


def _enum_from_proto(name: str, descriptor, prefix: str, doc: str):
    members = {value.name[len(prefix):]: value.number for value in descriptor.values}
    cls = enum.IntEnum(name, members, module=__name__)
    cls.__doc__ = doc
    return cls


JobState = _enum_from_proto(
    "JobState", job_pb2.JobState.DESCRIPTOR, "JOB_STATE_",
    "A job's state (``moex.v1.JobState``): UNSPECIFIED, PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED. "
    "SUCCEEDED, FAILED and CANCELLED are terminal and never left.")

EndReason = _enum_from_proto(
    "EndReason", job_pb2.EndReason.DESCRIPTOR, "END_REASON_",
    "Why a job (its last attempt) ended, as data (``moex.v1.EndReason``): SUCCEEDED, CANCELLED, RANK_LOST, "
    "RANK_HUNG, HOST_LOST, START_TIMEOUT, BAD_INPUT, OUT_OF_MEMORY, RANK_ERROR, LAUNCHER_ERROR, ENGINE, "
    "CONTROLLER_RESTART, CONTROLLER_SHUTDOWN; UNSPECIFIED while it runs. Branch on these, not on "
    "``Job.message``.")

TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


def _as_enum(cls, value: int):
    """The enum member for `value`, or the plain int when this client does not know it (a newer controller)."""
    try:
        return cls(value)
    except ValueError:
        return value


class Job:
    """A job as the controller answered it (``moex.v1.Job``), with typed accessors.

    Any field of the message not listed here is read through unchanged:
    ``job.attempts``, ``job.ranks``, ``job.load``, ``job.placement``,
    ``job.rebalances``, ``job.bench``, ``job.tokens_per_expert``,
    ``job.log_path``, the times (``submit_time_unix_ms``, ...).
    """

    __slots__ = ("proto",)

    def __init__(self, proto: job_pb2.Job):
        #: The ``moex.v1.Job`` message itself.
        self.proto = proto

    @property
    def id(self) -> str:
        """The job's id (``j-…``)."""
        return self.proto.id

    @property
    def name(self) -> str:
        """The name it was submitted with."""
        return self.proto.spec.name

    @property
    def state(self) -> "JobState":
        """Its :class:`JobState`."""
        return _as_enum(JobState, self.proto.state)

    @property
    def end_reason(self) -> "EndReason":
        """Why it ended (:class:`EndReason`); UNSPECIFIED while it has not."""
        return _as_enum(EndReason, self.proto.end_reason)

    @property
    def message(self) -> str:
        """The controller's words on its state: why it failed or was cancelled, in words a user can act on."""
        return self.proto.message

    @property
    def spec(self) -> job_pb2.JobSpec:
        """The ``moex.v1.JobSpec`` it runs (as accepted: defaults and resolved paths filled in)."""
        return self.proto.spec

    @property
    def metrics(self) -> job_pb2.JobMetrics:
        """Its running figures (``moex.v1.JobMetrics``): tokens/s, dispatch and combine seconds, imbalance, ..."""
        return self.proto.metrics

    @property
    def tokens_per_second(self) -> float:
        """Throughput of the steps so far, as rank 0 reported (0 before the first report)."""
        return self.proto.metrics.tokens_per_second

    @property
    def steps_done(self) -> int:
        """Steps rank 0 reported done."""
        return self.proto.metrics.steps_done

    @property
    def world_size(self) -> int:
        """Ranks of the current attempt (the spec's until a shrink)."""
        return self.proto.world_size or self.proto.spec.world_size

    @property
    def done(self) -> bool:
        """Whether it reached a terminal state (SUCCEEDED, FAILED, CANCELLED)."""
        return self.proto.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        """Whether it SUCCEEDED."""
        return self.proto.state == JobState.SUCCEEDED

    def to_dict(self) -> Dict[str, Any]:
        """The message as a dict, field names as in the proto (``world_size``), enums by name."""
        return json_format.MessageToDict(self.proto, preserving_proto_field_name=True)

    def __getattr__(self, field: str):
        # Only called for names not found above: the message's own fields.
        if field == "proto":
            raise AttributeError(field)
        try:
            return getattr(self.proto, field)
        except AttributeError:
            raise AttributeError(f"'Job' has no attribute or moex.v1.Job field {field!r}") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, Job) and self.proto == other.proto

    __hash__ = None  # mutable underneath

    def __repr__(self) -> str:
        state = self.state.name if isinstance(self.state, enum.Enum) else self.state
        return f"Job(id={self.id!r}, name={self.name!r}, state={state}, message={self.message!r})"


def parse_spec(spec: Union[None, job_pb2.JobSpec, Dict[str, Any]], fields: Dict[str, Any]) -> job_pb2.JobSpec:
    """A ``moex.v1.JobSpec`` from a message or a dict, with `fields` (keyword arguments) set over it.

    Dict keys and keyword names are the proto's field names (``world_size``,
    ``tokens_per_rank``); nested messages are dicts (``rebalance={"policy":
    "eplb"}``, ``bench={"tokens_per_rank": [512, 1024]}``). An unknown field,
    a value of the wrong type or one its field cannot hold (``world_size=2**32``
    for an int32) raises ``ValueError`` naming it, before anything is sent:
    protobuf would otherwise refuse it less clearly, and some clients silently
    truncate such values.
    """
    message = job_pb2.JobSpec()
    if isinstance(spec, job_pb2.JobSpec):
        message.CopyFrom(spec)
    elif isinstance(spec, dict):
        _merge_dict(message, spec, "spec")
    elif spec is not None:
        raise TypeError(f"spec must be a dict or a moex.v1.JobSpec, not {type(spec).__name__}")
    if fields:
        _merge_dict(message, fields, "spec")
    return message


def _merge_dict(message, values: Dict[str, Any], where: str) -> None:
    for key, value in values.items():
        field = message.DESCRIPTOR.fields_by_name.get(key)
        if field is None:
            known = ", ".join(sorted(message.DESCRIPTOR.fields_by_name))
            raise ValueError(f"{where}.{key} is not a field of {message.DESCRIPTOR.full_name} (fields: {known})")
        try:
            json_format.ParseDict({key: value}, message, ignore_unknown_fields=False)
        except json_format.ParseError as e:
            raise ValueError(f"{where}.{key} = {_clip(value)}: {e}") from None


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def placement_to_dict(placement: placement_pb2.Placement) -> Dict[str, Any]:
    """A ``moex.v1.Placement`` as a dict (version, num_experts, slot_expert, slots_per_rank)."""
    return json_format.MessageToDict(placement, preserving_proto_field_name=True)
