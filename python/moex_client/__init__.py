"""Python client for the moex control plane (``moex serve``).

::

    import moex_client

    with moex_client.Client("127.0.0.1:50051", token_file="~/.moex-token") as client:
        job = client.submit(name="demo", world_size=2, model="tiny", steps=3, tokens_per_rank=64)
        for update in client.watch(job.id):
            print(update.state.name, update.message)
        job = client.get(job.id)
        print(job.succeeded, job.tokens_per_second)

See docs/python-client.md in the moex repository for the whole API.
"""

from ._gen.moex.v1 import job_pb2, placement_pb2
from .client import DEFAULT_ADDRESS, DEFAULT_STREAM_TIMEOUT, DEFAULT_TIMEOUT, Client, read_token_file
from .errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded, FailedPrecondition, Internal,
                     InvalidArgument, MoexError, NotFound, OutOfRange, PermissionDenied, ResourceExhausted,
                     Unauthenticated, Unavailable, Unimplemented, Unknown, error_class)
from .types import TERMINAL_STATES, EndReason, Job, JobState, parse_spec, placement_to_dict

#: The generated message classes, for building specs by hand: ``moex_client.JobSpec(name=..., ...)``.
JobSpec = job_pb2.JobSpec
RebalanceSpec = job_pb2.RebalanceSpec
BenchSpec = job_pb2.BenchSpec
Placement = placement_pb2.Placement

__version__ = "0.1.0"

__all__ = [
    "Client", "DEFAULT_ADDRESS", "DEFAULT_TIMEOUT", "DEFAULT_STREAM_TIMEOUT", "read_token_file",
    "Job", "JobState", "EndReason", "TERMINAL_STATES", "parse_spec", "placement_to_dict",
    "JobSpec", "RebalanceSpec", "BenchSpec", "Placement", "job_pb2", "placement_pb2",
    "MoexError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
    "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented",
    "Internal", "Unavailable", "DataLoss", "Unauthenticated", "error_class",
]
