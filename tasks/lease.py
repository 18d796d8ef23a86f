"""Ownership of a live stage run (DESIGN §4): a lease in the run's MLflow tags that a heartbeat thread renews.

Tags on the stage run:
- `multistep.claim.<token>` = `host:pid:place`, one per process standing for the run. The token starts with the wall
  clock in nanoseconds, so tokens sort by when they were made, and a claim lives until its token is older than the expiry.
- `multistep.owner` = `host:pid:token` of the process that won the run (kept afterwards: who ran it last).
- `multistep.heartbeat` = unix time of the owner's last beat, renewed every MULTISTEP_LEASE_HEARTBEAT_S seconds and
  deleted when the owner lets go; the lease is dead once it is older than MULTISTEP_LEASE_EXPIRY_S, or at once when the
  owner's pid is gone on this machine (kill -9).
"""

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import mlflow
from mlflow.entities import Run, RunTag
from mlflow.tracking import MlflowClient

from tasks import interrupt
from tasks.errors import UserError, env_seconds

CLAIM = "multistep.claim."
OWNER = "multistep.owner"
HEARTBEAT = "multistep.heartbeat"


def heartbeat_s() -> float:
    return env_seconds("MULTISTEP_LEASE_HEARTBEAT_S", 10)


def expiry_s() -> float:
    """A few missed beats (six by default): a stalled store call or a busy CPU delays a beat, it does not kill the owner."""
    return env_seconds("MULTISTEP_LEASE_EXPIRY_S", 6 * heartbeat_s())


def settle_s() -> float:
    return env_seconds("MULTISTEP_LEASE_SETTLE_S", 0.25)


def poll_s(waited_s: float) -> float:
    """The pause before the next look at a rival's run (interrupt.poll_s, at most MULTISTEP_LEASE_POLL_S): a sweep's cells
    that race for a short stage, such as the data preparation, go on as soon as it is done."""
    return interrupt.poll_s(waited_s, env_seconds("MULTISTEP_LEASE_POLL_S", 2))


def wait_s() -> float:
    return env_seconds("MULTISTEP_LEASE_WAIT_S", 24 * 3600)


@cache
def place() -> str:
    """This machine and pid namespace: only there does a pid name the same process (two containers may share a host name)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


def new_token() -> str:
    return f"{time.time_ns():020d}-{secrets.token_hex(4)}"


def _token_age(token: str) -> float:
    try:
        return time.time() - int(token.split("-", 1)[0]) / 1e9
    except ValueError:
        return float("inf")


@dataclass(frozen=True)
class Holder:
    """A process that owns, or stands for, an unfinished run."""

    run_id: str
    host: str
    pid: int
    token: str
    place: str
    heartbeat: float | None = None  # unix time of the last beat; None for a claim that has not won yet

    def describe(self) -> str:
        beat = f", last heartbeat {time.time() - self.heartbeat:.0f} s ago" if self.heartbeat else ""
        return f"process {self.pid} on {self.host} (MLflow run {self.run_id}{beat})"


def _alive(holder: Holder) -> bool:
    if holder.place != place():
        return True  # another machine: only its heartbeat can tell
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _claims(run: Run) -> list[Holder]:
    """The live claims on a run that have not won it (a winner's claim lives as long as its heartbeat: `_owner`)."""
    found = []
    owner_token = _split(run.data.tags.get(OWNER, "::"))[2]
    for key, value in run.data.tags.items():
        token = key[len(CLAIM) :]
        if key.startswith(CLAIM) and token != owner_token and _token_age(token) < expiry_s():
            host, pid, where = _split(value)
            found.append(Holder(run.info.run_id, host, pid, token, where))
    return [c for c in found if _alive(c)]


def _owner(run: Run) -> Holder | None:
    tags = run.data.tags
    if OWNER not in tags or HEARTBEAT not in tags:
        return None
    host, pid, token = _split(tags[OWNER])
    try:
        beat = float(tags[HEARTBEAT])
    except ValueError:  # not ours to make sense of: as good as no beat
        return None
    # The owner keeps its claim while it holds the run; the claim says where its pid lives.
    where = _split(tags.get(CLAIM + token, "::"))[2]
    owner = Holder(run.info.run_id, host, pid, token, where, beat)
    return owner if time.time() - beat < expiry_s() and _alive(owner) else None


def _split(value: str) -> tuple[str, int, str]:
    host, _, rest = value.partition(":")
    pid, _, last = rest.partition(":")
    return host, int(pid) if pid.isdigit() else -1, last


def holder(runs: list[Run], me: str | None = None) -> Holder | None:
    """The live owner of any of these unfinished runs, else a live claimant other than token `me`, else None."""
    for run in runs:
        owner = _owner(run)
        if owner and owner.token != me:
            return owner
    claims = sorted((c for run in runs for c in _claims(run) if c.token != me), key=lambda c: c.token)
    return claims[0] if claims else None


class Lease:
    """A won run: its heartbeat thread renews the lease until `release`."""

    def __init__(self, run_id: str, token: str, created: bool):
        self.run_id, self.token, self.created = run_id, token, created
        self._client = MlflowClient(mlflow.get_tracking_uri())  # the thread must not depend on later global changes
        # One batch, so that no reader sees the new owner without its first beat.
        owner = f"{socket.gethostname()}:{os.getpid()}:{token}"
        self._client.log_batch(run_id, tags=[RunTag(OWNER, owner), RunTag(HEARTBEAT, f"{time.time():.3f}")])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat-{run_id[:8]}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(heartbeat_s()):
            try:
                self._client.set_tag(self.run_id, HEARTBEAT, f"{time.time():.3f}")
            except Exception:  # noqa: BLE001 - a store hiccup costs one beat; beats missed until the expiry end the lease, as they should
                pass

    def release(self) -> None:
        """Stop beating and give the run up, so that a waiting process takes it over now rather than after the expiry."""
        self._stop.set()
        self._thread.join()
        for tag in (HEARTBEAT, CLAIM + self.token):
            try:
                self._client.delete_tag(self.run_id, tag)
            except Exception:  # noqa: BLE001 - an unreachable store: the lease then expires by itself
                pass


def acquire(
    run_id: str | None, create: Callable[[dict[str, str]], str], rivals: Callable[[], list[Run]]
) -> Lease | None:
    """Stand for `run_id` (or a run that `create(tags)` opens) and return its lease, or None when another process won it.

    MLflow tags have no compare-and-set, so the processes elect: each writes a claim whose token sorts by the time it
    was made, waits MULTISTEP_LEASE_SETTLE_S, re-reads every unfinished run of the stage key (`rivals()`), and only the
    smallest live token wins, unless a live owner already exists. A rival that read before a smaller claim became
    visible can only have missed it if writing that claim took longer than the settle time; so a claimant whose own
    write was that slow, and who sees another live claim, stands down too. Hence two processes never both win (with
    clocks across machines within the settle time of each other); both may stand down, and then simply try again.
    """
    token = new_token()
    started = time.monotonic()
    claim = {CLAIM + token: f"{socket.gethostname()}:{os.getpid()}:{place()}"}
    created = run_id is None
    client = MlflowClient()
    if created:
        run_id = create(claim)  # the claim is written with the run: nobody sees the run unclaimed
    else:
        client.set_tag(run_id, *next(iter(claim.items())))
    slow = time.monotonic() - started >= settle_s()
    time.sleep(settle_s())  # the election's pause (see above), not a wait for a result
    others = rivals()
    smallest = min((c.token for run in others for c in _claims(run)), default=token)
    contested = holder(others, me=token) is not None
    if not (_owner_other_than(others, token) or smallest < token or (slow and contested)):
        return Lease(run_id, token, created)
    if created:
        client.delete_run(run_id)  # nobody else claims a run that carries a live claim from its first moment
    else:
        client.delete_tag(run_id, CLAIM + token)
    return None


def _owner_other_than(runs: list[Run], token: str) -> bool:
    return any(owner.token != token for owner in filter(None, map(_owner, runs)))


def take(
    stage: str,
    result: Callable[[], Run | None],
    unfinished: Callable[[], list[Run]],
    create: Callable[[dict[str, str]], str],
) -> "Run | Lease":
    """The stage key's finished run (`result()`: a cache hit), or the lease on the run this process is to run: a new one
    (`create(tags)`), or the newest unfinished one whose owner is gone. Waits while another live process runs the stage."""
    wait = Wait(stage)
    while True:
        # Unfinished first: a run that finishes between the two searches is then seen finished, never missed by both.
        runs = unfinished()
        done = result()
        if done is not None:
            return done
        other = holder(runs)
        if other is not None:  # never resume a run whose owner is alive: wait for its result
            wait(other)
            continue
        held = acquire(runs[0].info.run_id if runs else None, create=create, rivals=unfinished)
        if held is None:
            continue
        if result() is None:
            return held
        held.release()  # a rival ran the whole stage while we were electing: take its result instead
        if held.created:
            MlflowClient().delete_run(held.run_id)


class Wait:
    """Waiting for another process's run of the same stage key: said once, bounded by MULTISTEP_LEASE_WAIT_S."""

    def __init__(self, stage: str):
        self.stage, self.since = stage, None

    def __call__(self, other: Holder) -> None:
        # Ctrl-C ends the wait, not just the next stage
        interrupt.check(f"{self.stage} while waiting for {other.describe()}")
        if self.since is None:
            self.since = time.monotonic()
            print(
                f"{self.stage}: the same stage is running in {other.describe()}; waiting for it to finish to reuse its result"
            )
        waited = time.monotonic() - self.since
        if waited > wait_s():
            raise UserError(
                f"{self.stage}: the same stage is still running in {other.describe()} after {waited:.0f} s of waiting "
                "(MULTISTEP_LEASE_WAIT_S): run again once it has finished, or stop that process and run again to resume its checkpoint."
            )
        time.sleep(poll_s(waited))  # polling a run in another process: there is no event to wait on

    @property
    def waited(self) -> bool:
        return self.since is not None
