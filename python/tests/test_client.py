"""moex_client against a real `moex serve` (the binary in $MOEX_BIN).

Run by CTest as control.python_client (tests/cluster/python_client.sh), or by
hand, from an environment where moex_client is installed:

    MOEX_BIN=build/ci/bin/moex OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        venv/bin/python python/tests/test_client.py -v

One controller serves every test of ClientAgainstServeTest (started with a
bearer token, on a free loopback port, state in a temporary folder); it is
stopped in tearDownClass, and any process of its jobs left behind is killed
and reported.
"""

import os
import re
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import grpc

import moex_client
from moex_client import Client, EndReason, JobState

MOEX_BIN = os.environ.get("MOEX_BIN", "")
TOKEN = "python-client-test-token"
# A small job that finishes in about a second on 2 cores.
SMALL = dict(world_size=2, model="tiny", steps=2, tokens_per_rank=64)


def deadline_loop(seconds, what):
    """Yields until `seconds` pass, then fails the test saying what was waited for."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def processes_naming(needle):
    """Pids of the processes whose command line contains `needle` (bytes)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read().replace(b"\0", b" "):
                    found.append(int(entry))
        except OSError:
            pass
    return found


_LIVE = set()  # the Serves not stopped yet, for the SIGTERM handler below


def _stop_every_serve_and_exit(signum, frame):
    # `timeout` or CTest ending this run: no controller or job of it outlives it.
    # `timeout` signals the child and then its whole group, so a second
    # SIGTERM follows at once: it must not cut this cleanup short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for serve in list(_LIVE):
        try:
            left = serve.stop()
            if left:
                print(f"killed processes of the controller's jobs left after it stopped: {left}", file=sys.stderr)
        except BaseException as e:  # keep going: the other controllers, then exit
            print(f"stopping moex serve at {serve.address}: {e!r}", file=sys.stderr)
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, _stop_every_serve_and_exit)


class Serve:
    """A `moex serve` on a free loopback port with a token, its state in a temporary folder."""

    def __init__(self, binary, token, extra_args=()):
        self.dir = tempfile.TemporaryDirectory(prefix="moex-pyclient-")
        self.token_file = os.path.join(self.dir.name, "token")
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        self.out_path = os.path.join(self.dir.name, "serve.out")
        self.err_path = os.path.join(self.dir.name, "serve.err")
        env = dict(os.environ)
        if os.geteuid() == 0:  # mpirun refuses root without these (CTest sets them too)
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        try:
            with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
                self.process = subprocess.Popen(
                    [binary, "serve", "--listen", "127.0.0.1:0", "--state-dir", os.path.join(self.dir.name, "state"),
                     "--token-file", self.token_file, "--cancel-grace", "2", *extra_args],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True)
        except BaseException:
            self.dir.cleanup()
            raise
        _LIVE.add(self)
        self.address = None
        try:
            for _ in deadline_loop(30, "moex serve to say 'listening on'"):
                match = re.search(r"listening on (127\.0\.0\.1:\d+)", self.read(self.out_path))
                if match:
                    self.address = match.group(1)
                    break
                if self.process.poll() is not None:
                    raise AssertionError(f"moex serve exited {self.process.returncode}: {self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def read(path):
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, lines=20):
        text = self.read(self.out_path) + self.read(self.err_path)
        return "\n".join(text.splitlines()[-lines:])

    def stop(self):
        """Stops the controller (SIGTERM, SIGKILL after 30 s); answers the pids of its jobs it left behind."""
        _LIVE.discard(self)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        left = []
        if self.address:
            # Every process of a job names its controller on its command line
            # (mpirun ... moex worker --controller ADDR); the port is ours alone.
            left = processes_naming(f"--controller {self.address}".encode())
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for _ in range(50):  # they are gone within a moment: then nothing writes in the folder
                if not any(os.path.exists(f"/proc/{pid}") for pid in left):
                    break
                time.sleep(0.1)
        shutil.rmtree(self.dir.name, ignore_errors=True)
        self.dir.cleanup()
        return left


def free_port():
    """A loopback port nobody listens on (bound and closed: refused from then on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OfflineTest(unittest.TestCase):
    """What the client decides before anything is sent; no controller needed."""

    def test_spec_from_dict_and_keywords(self):
        spec = moex_client.parse_spec({"name": "a", "world_size": 4, "rebalance": {"policy": "eplb"}},
                                      {"world_size": 2, "layer": 0})
        self.assertEqual(spec.world_size, 2)  # keywords override the dict
        self.assertTrue(spec.HasField("layer"))
        self.assertEqual(spec.rebalance.policy, "eplb")

    def test_spec_values_that_do_not_fit_are_refused_naming_the_field(self):
        for bad, field in (({"world_size": 2**32}, "spec.world_size"), ({"seed": -1}, "spec.seed"),
                           ({"nope": 1}, "spec.nope"), ({"check": "yes"}, "spec.check")):
            with self.assertRaisesRegex(ValueError, re.escape(field)):
                moex_client.parse_spec(None, bad)

    def test_error_classes_by_code(self):
        self.assertIs(moex_client.error_class(grpc.StatusCode.NOT_FOUND), moex_client.NotFound)
        self.assertIs(moex_client.error_class(grpc.StatusCode.UNAUTHENTICATED), moex_client.Unauthenticated)
        self.assertIs(moex_client.error_class(grpc.StatusCode.OK), moex_client.MoexError)
        for code in grpc.StatusCode:
            if code != grpc.StatusCode.OK:
                cls = moex_client.error_class(code)
                self.assertTrue(issubclass(cls, moex_client.MoexError))
                self.assertEqual(cls.code, code)

    def test_a_token_file_open_to_others_is_refused(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "token")
            with open(path, "w") as f:
                f.write("secret\nsecond line\n")
            os.chmod(path, 0o644)
            with self.assertRaisesRegex(ValueError, "open to others .*chmod 600"):
                Client("127.0.0.1:1", token_file=path)
            os.chmod(path, 0o600)
            self.assertEqual(moex_client.read_token_file(path), "secret")

    def test_bad_arguments_are_refused(self):
        with self.assertRaisesRegex(ValueError, "tls_cert and tls_key go together"):
            Client("127.0.0.1:1", tls=True, tls_cert="c.pem")
        with self.assertRaisesRegex(ValueError, "need tls"):
            Client("127.0.0.1:1", tls_cert="c.pem", tls_key="k.pem")
        with self.assertRaisesRegex(ValueError, "timeout must be a positive"):
            Client("127.0.0.1:1", timeout=0)

    def test_nothing_listening_is_unavailable(self):
        address = f"127.0.0.1:{free_port()}"
        with Client(address, timeout=5) as client:
            with self.assertRaises(moex_client.Unavailable) as caught:
                client.get("j-1")
        self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE)
        self.assertIn(address, caught.exception.message)


@unittest.skipUnless(MOEX_BIN, "set MOEX_BIN to the moex binary")
class ClientAgainstServeTest(unittest.TestCase):
    serve = None

    @classmethod
    def setUpClass(cls):
        cls.serve = Serve(MOEX_BIN, TOKEN)
        try:
            cls.client = Client(cls.serve.address, token=TOKEN, timeout=20, stream_timeout=60)
        except BaseException:  # tearDownClass does not run when setUpClass fails
            cls.serve.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        left = cls.serve.stop()
        if left:
            raise AssertionError(f"processes of the controller's jobs were left after it stopped (killed): {left}")

    def run_small(self, **fields):
        """Submits a small job and waits (at most 60 s) for it to end; answers it."""
        job = self.client.submit(**{**SMALL, **fields})
        return self.client.wait(job.id, timeout=60)

    def test_submit_watch_get_logs(self):
        job = self.client.submit(name="py-first", check=True, **SMALL)
        self.assertRegex(job.id, r"^j-")
        self.assertEqual(job.state, JobState.PENDING)
        self.assertEqual(job.spec.world_size, 2)
        updates = list(self.client.watch(job.id, timeout=60))
        states = [u.state for u in updates]
        self.assertEqual(states[-1], JobState.SUCCEEDED, f"{updates[-1]!r}; serve: {self.serve.log_tail()}")
        self.assertEqual(states, sorted(states), "a job's state went backwards")
        self.assertTrue(all(not u.done for u in updates[:-1]))

        done = self.client.get(job.id)
        self.assertTrue(done.succeeded)
        self.assertTrue(done.done)
        self.assertEqual(done.end_reason, EndReason.SUCCEEDED)
        self.assertGreater(done.tokens_per_second, 0)
        self.assertEqual(done.steps_done, 2)
        self.assertEqual(done.name, "py-first")
        self.assertEqual(len(done.ranks), 2)  # a field read through from the message
        self.assertGreater(done.end_time_unix_ms, 0)
        self.assertEqual(done.to_dict()["state"], "JOB_STATE_SUCCEEDED")
        # A watch of an ended job answers it once and ends.
        self.assertEqual([u.state for u in self.client.watch(job.id)], [JobState.SUCCEEDED])

        log = b"".join(self.client.logs(job.id))
        self.assertIn(f"worker --job-id {job.id}".encode(), log)
        lines = list(self.client.log_lines(job.id, follow=True, timeout=30))  # ended: follow ends at once
        self.assertEqual(lines, log.decode("utf-8", "replace").rstrip("\n").split("\n"))

    def test_list_walks_every_page(self):
        ids = [self.client.submit(name=f"py-list-{i}", world_size=1, model="tiny", steps=1,
                                  tokens_per_rank=16).id for i in range(3)]
        for job_id in ids:
            self.assertEqual(self.client.wait(job_id, timeout=60).state, JobState.SUCCEEDED)
        first_page, token = self.client.list_page(page_size=2)
        self.assertEqual(len(first_page), 2)
        self.assertNotEqual(token, "")
        paged = [job.id for job in self.client.list(page_size=2)]
        whole = [job.id for job in self.client.list()]
        self.assertEqual(paged, whole)  # oldest first, every job once
        self.assertEqual(len(set(paged)), len(paged))
        self.assertEqual([i for i in paged if i in ids], ids)
        self.assertEqual(paged[:2], [j.id for j in first_page])
        with self.assertRaises(moex_client.InvalidArgument):
            self.client.list_page(page_token="not-a-token-of-this-controller")

        # Deleting an ended job: its record goes (UNAVAILABLE while its hosts are cleaned: retry).
        for _ in deadline_loop(20, f"DeleteJob {ids[0]} to stop answering UNAVAILABLE"):
            try:
                deleted = self.client.delete(ids[0])
                break
            except moex_client.Unavailable:
                pass
        self.assertEqual(deleted.id, ids[0])
        self.assertEqual(deleted.state, JobState.SUCCEEDED)
        with self.assertRaises(moex_client.NotFound):
            self.client.get(ids[0])
        self.assertNotIn(ids[0], [job.id for job in self.client.list(page_size=1)])

    def test_long_job_placement_rebalance_cancel(self):
        job = self.client.submit(name="py-long", world_size=2, model="tiny", steps=100000, tokens_per_rank=64,
                                 redundant_experts=2, routing_skew=1.2)
        try:
            for _ in deadline_loop(30, "the long job to report its load"):
                now = self.client.get(job.id)
                self.assertFalse(now.done, f"the long job ended: {now!r}; serve: {self.serve.log_tail()}")
                if now.state == JobState.RUNNING and now.load.steps > 0:
                    break
            # A watch's deadline ends it with DeadlineExceeded, the job untouched.
            with self.assertRaises(moex_client.DeadlineExceeded) as caught:
                for _ in self.client.watch(job.id, timeout=0.5):
                    pass
            self.assertIn("deadline of 0.5 s", caught.exception.message)
            with self.assertRaisesRegex(moex_client.FailedPrecondition, "cancel it first"):
                self.client.delete(job.id)

            placement = self.client.placement(job.id)
            self.assertGreaterEqual(placement.version, 1)
            self.assertEqual(sum(placement.slots_per_rank), len(placement.slot_expert))
            with self.assertRaises(moex_client.InvalidArgument):
                self.client.rebalance(job.id, policy="no-such-policy")
            published = self.client.rebalance(job.id)
            self.assertEqual(published.version, placement.version + 1)
            self.assertEqual(self.client.placement(job.id).version, published.version)
            for _ in deadline_loop(30, "the ranks to serve the new placement"):
                if self.client.get(job.id).metrics.placement_version == published.version:
                    break
        finally:
            cancelled = self.client.cancel(job.id)
        self.assertEqual(cancelled.id, job.id)
        end = self.client.wait(job.id, timeout=30)
        self.assertEqual(end.state, JobState.CANCELLED, repr(end))
        self.assertEqual(end.end_reason, EndReason.CANCELLED)
        self.assertEqual(self.client.cancel(job.id).state, JobState.CANCELLED)  # a second cancel: unchanged

    def test_errors_are_typed(self):
        with self.assertRaises(moex_client.NotFound) as caught:
            self.client.get("j-missing")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertEqual(caught.exception.message, "no job 'j-missing'")
        for call in (self.client.cancel, self.client.delete, self.client.placement, self.client.rebalance):
            with self.assertRaises(moex_client.NotFound):
                call("j-missing")
        with self.assertRaises(moex_client.NotFound):
            list(self.client.watch("j-missing"))
        with self.assertRaises(moex_client.NotFound):
            list(self.client.logs("j-missing"))

        with self.assertRaises(moex_client.InvalidArgument) as caught:
            self.client.submit(name="x;y", **SMALL)
        self.assertIn("spec.name", caught.exception.message)
        with self.assertRaisesRegex(moex_client.InvalidArgument, r"spec\.world_size is 99"):
            self.client.submit(name="big", world_size=99, model="tiny", steps=1)
        with self.assertRaisesRegex(moex_client.InvalidArgument, "no-such-model"):
            self.client.submit(name="nomodel", world_size=2, model="no-such-model", steps=1)
        # Refused by the client before anything is sent: an int32 cannot hold it.
        with self.assertRaisesRegex(moex_client.InvalidArgument, r"spec\.world_size = 4294967298"):
            self.client.submit(name="wide", world_size=4294967298, model="tiny")

        for token in ("wrong-token", None):
            with Client(self.serve.address, token=token, timeout=10) as other:
                with self.assertRaises(moex_client.Unauthenticated) as caught:
                    other.get("j-missing")
                self.assertEqual(caught.exception.code, grpc.StatusCode.UNAUTHENTICATED)
                with self.assertRaises(moex_client.Unauthenticated):
                    list(other.list())
                with self.assertRaises(moex_client.Unauthenticated):
                    other.submit(name="nope", **SMALL)
        self.assertIsInstance(caught.exception, moex_client.MoexError)

    def test_token_file(self):
        with Client(self.serve.address, token_file=self.serve.token_file) as client:
            with self.assertRaises(moex_client.NotFound):
                client.get("j-missing")

    def test_spec_as_a_message(self):
        spec = moex_client.JobSpec(name="py-message", world_size=1, model="tiny", steps=1, tokens_per_rank=16)
        job = self.client.submit(spec)
        self.assertEqual(self.client.wait(job, timeout=60).state, JobState.SUCCEEDED)

    def test_tokens_per_rank_unset_succeeds(self):
        # Depends on the controller's fix that tokens_per_rank 0 (unset) means
        # moex run's default (512) rather than an empty run (main f0b468b).
        job = self.client.submit(name="py-default-tokens", world_size=2, model="tiny", steps=1)
        end = self.client.wait(job.id, timeout=60)
        self.assertEqual(end.state, JobState.SUCCEEDED, f"{end!r}; serve: {self.serve.log_tail()}")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=60)


@unittest.skipUnless(MOEX_BIN, "set MOEX_BIN to the moex binary")
@unittest.skipUnless(any(os.access(os.path.join(p, "openssl"), os.X_OK) for p in os.environ.get("PATH", "").split(":")),
                     "openssl is needed to make the test's certificates")
class MutualTlsTest(unittest.TestCase):
    """A controller demanding client certificates (as tests/cluster/tls_session.sh); no job is run."""

    def test_mutual_tls(self):
        with tempfile.TemporaryDirectory(prefix="moex-pyclient-tls-") as d:
            openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                    "-days", "1", "-subj", "/CN=moex-test-ca", cwd=d)
            with open(os.path.join(d, "san.ext"), "w") as f:
                f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
            for who in ("server", "client"):
                openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr",
                        "-subj", f"/CN={who}", cwd=d)
                openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                        "-out", f"{who}.pem", "-days", "1", "-extfile", "san.ext", cwd=d)
            path = lambda name: os.path.join(d, name)  # noqa: E731
            serve = Serve(MOEX_BIN, TOKEN, ["--tls-cert", path("server.pem"), "--tls-key", path("server.key"),
                                            "--tls-client-ca", path("ca.pem")])
            try:
                with Client(serve.address, token=TOKEN, tls=path("ca.pem"), tls_cert=path("client.pem"),
                            tls_key=path("client.key"), timeout=10) as client:
                    with self.assertRaises(moex_client.NotFound):  # answered: the connection works
                        client.get("j-missing")
                    self.assertIsInstance(list(client.list()), list)
                with Client(serve.address, token=TOKEN, tls=path("ca.pem"), timeout=10) as no_cert:
                    with self.assertRaises(moex_client.Unavailable):
                        no_cert.get("j-missing")
                with Client(serve.address, token=TOKEN, timeout=10) as plaintext:
                    with self.assertRaises(moex_client.Unavailable):
                        plaintext.get("j-missing")
            finally:
                self.assertEqual(serve.stop(), [])


if __name__ == "__main__":
    unittest.main()
