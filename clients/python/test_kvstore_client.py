#!/usr/bin/env python3
"""Drives a running kvstore cluster with a Python client generated from proto/:
put, get, delete and status, a compare-and-swap loop on one counter, a
prefix range, a watch on a prefix (live events, then history from a
start revision on another node), and a lease kept alive over its stream past
its TTL, then left to expire with its key.

The stubs come from `make python-client` (grpcio-tools, into
clients/python/generated/); nothing here is written by hand but the calls.
The cluster comes from the environment:

    KVSTORE_ENDPOINTS       client ports, e.g. 127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053
    KVSTORE_RAFT_ENDPOINTS  raft ports (optional), same order

`make conformance-clients` starts a fresh docker cluster with
`kvstore-conformance exec` and runs this file; against `make cluster-local` run
    KVSTORE_ENDPOINTS=127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053 \\
        .venv/bin/python clients/python/test_kvstore_client.py

Exit code 0 when every check passed, 1 otherwise.
"""

import os
import queue
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "generated"))

try:
    import grpc
    from kvstore.v1 import kv_pb2, kv_pb2_grpc
    from kvstore.raft.v1 import raft_pb2, raft_pb2_grpc
except ImportError as error:  # pragma: no cover - a setup problem, not a test
    sys.exit(f"cannot import the generated client ({error}); run `make python-client` first")

TIMEOUT_SECONDS = 5.0
ROLE_LEADER = kv_pb2.ROLE_LEADER


class Checks:
    """Counts passed and failed checks; never stops at the first failure."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, condition, detail=""):
        if condition:
            self.passed += 1
            print(f"ok   {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}: {detail}")


def stubs(endpoints):
    return {address: kv_pb2_grpc.KVStub(grpc.insecure_channel(address)) for address in endpoints}


def status_of(stub):
    return stub.Status(kv_pb2.StatusRequest(), timeout=TIMEOUT_SECONDS)


def find_leader(clients, deadline_seconds=30.0):
    """Address and status of the node every answering node agrees leads."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        statuses = {}
        for address, stub in clients.items():
            try:
                statuses[address] = status_of(stub)
            except grpc.RpcError:
                pass
        leaders = [(a, s) for a, s in statuses.items() if s.role == ROLE_LEADER]
        if leaders and all(s.leader_id == leaders[0][1].id for s in statuses.values()):
            return leaders[0]
        if time.monotonic() > deadline:
            raise SystemExit(f"no agreed leader within {deadline_seconds}s: {statuses}")
        time.sleep(0.2)


def rpc_code(call):
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def prefix_end(prefix):
    """The range end of every key starting with `prefix` (etcdctl's --prefix)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def increment(stub, key):
    """One compare-and-swap increment: read the counter and its mod revision,
    then a txn that writes the value plus one only if the key is unchanged.
    True when it swapped."""
    read = stub.Range(kv_pb2.RangeRequest(key=key), timeout=TIMEOUT_SECONDS)
    value, revision = (int(read.kvs[0].value), read.kvs[0].mod_revision) if read.kvs else (0, 0)
    txn = kv_pb2.TxnRequest(
        compare=[kv_pb2.Compare(key=key, result=kv_pb2.COMPARE_RESULT_EQUAL,
                                target=kv_pb2.COMPARE_TARGET_MOD, mod_revision=revision)],
        success=[kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(key=key, value=str(value + 1).encode()))],
    )
    return stub.Txn(txn, timeout=TIMEOUT_SECONDS).succeeded


def cas_loop(checks, clients, endpoints):
    """Increments one counter through every node in turn, interleaving two
    clients so that some compare-and-swaps lose and are retried."""
    key = f"python-counter-{uuid.uuid4().hex[:8]}".encode()
    stubs_in_turn = [clients[address] for address in endpoints]
    increments, retries = 20, 0
    for round_ in range(increments):
        stub = stubs_in_turn[round_ % len(stubs_in_turn)]
        # A rival reads the same revision and wins first every third round.
        if round_ % 3 == 0:
            read = stub.Range(kv_pb2.RangeRequest(key=key), timeout=TIMEOUT_SECONDS)
            stale_revision = read.kvs[0].mod_revision if read.kvs else 0
            stale_value = int(read.kvs[0].value) if read.kvs else 0
            increment(stubs_in_turn[(round_ + 1) % len(stubs_in_turn)], key)
            lost = stub.Txn(kv_pb2.TxnRequest(
                compare=[kv_pb2.Compare(key=key, result=kv_pb2.COMPARE_RESULT_EQUAL,
                                        target=kv_pb2.COMPARE_TARGET_MOD, mod_revision=stale_revision)],
                success=[kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(
                    key=key, value=str(stale_value + 1).encode()))],
            ), timeout=TIMEOUT_SECONDS)
            checks.check(f"cas round {round_}: a swap from a stale revision is refused", not lost.succeeded, lost)
        while not increment(stub, key):
            retries += 1
    final = clients[endpoints[0]].Range(kv_pb2.RangeRequest(key=key), timeout=TIMEOUT_SECONDS)
    rivals = len([r for r in range(increments) if r % 3 == 0])
    checks.check("cas loop: the counter holds every increment, none lost",
                 final.kvs and int(final.kvs[0].value) == increments + rivals
                 and final.kvs[0].version == increments + rivals, final)
    checks.check("cas loop: the header carries the store revision",
                 final.header.revision >= final.kvs[0].mod_revision > 0, final.header)


def prefix_range(checks, clients, writer):
    """Writes keys under a prefix and reads them back as one range."""
    prefix = f"python-range-{uuid.uuid4().hex[:8]}/".encode()
    for index in range(5):
        writer.Put(kv_pb2.PutRequest(key=prefix + str(index).encode(), value=str(index).encode()),
                   timeout=TIMEOUT_SECONDS)
    writer.Put(kv_pb2.PutRequest(key=prefix[:-1] + b"0", value=b"outside"), timeout=TIMEOUT_SECONDS)
    for address, stub in clients.items():
        got = stub.Range(kv_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix), limit=3),
                         timeout=TIMEOUT_SECONDS)
        checks.check(f"prefix range at {address}: first 3 of 5 keys, count 5, more",
                     [kv.key for kv in got.kvs] == [prefix + b"0", prefix + b"1", prefix + b"2"]
                     and got.count == 5 and got.more, got)
    deleted = writer.DeleteRange(kv_pb2.DeleteRangeRequest(key=prefix, range_end=prefix_end(prefix)),
                                 timeout=TIMEOUT_SECONDS)
    checks.check("prefix delete: 5 keys deleted", deleted.deleted == 5, deleted)
    code = rpc_code(lambda: writer.Range(kv_pb2.RangeRequest(key=b"b", range_end=b"a"), timeout=TIMEOUT_SECONDS))
    checks.check("range_end before key: INVALID_ARGUMENT", code == grpc.StatusCode.INVALID_ARGUMENT, code)


class WatchStream:
    """One Watch stream: requests go through a queue, responses come back in
    order. The call's deadline bounds every wait."""

    def __init__(self, address, deadline_seconds=10.0):
        self._requests = queue.Queue()
        stub = kv_pb2_grpc.WatchStub(grpc.insecure_channel(address))
        self._responses = stub.Watch(iter(self._requests.get, None), timeout=deadline_seconds)

    def create(self, **fields):
        self._requests.put(kv_pb2.WatchRequest(create_request=kv_pb2.WatchCreateRequest(**fields)))
        return next(self._responses)

    def events(self, count):
        """The next `count` events (whatever responses carry them), or fewer
        when the stream ends first (its deadline passed)."""
        events = []
        try:
            while len(events) < count:
                events.extend(next(self._responses).events)
        except grpc.RpcError as error:
            print(f"     the watch stream ended: {error.code()}")
        return events

    def close(self):
        self._requests.put(None)
        self._responses.cancel()


def seen(events):
    """Events as (type, key, value, revision), what the checks compare."""
    return [(event.type, event.kv.key, event.kv.value, event.kv.mod_revision) for event in events]


def watch_prefix(checks, clients, writer, watcher_address, resume_address):
    """Watches a prefix at one node, writes through the KV service of
    another, and checks the events: each write once, in revision order, at
    the revision its response header named, nothing outside the prefix.
    Then a watch at another node from the second write's revision gets the
    same events from there on, out of the history."""
    prefix = f"python-watch-{uuid.uuid4().hex[:8]}/".encode()
    stream = WatchStream(watcher_address)
    try:
        created = stream.create(key=prefix, range_end=prefix_end(prefix))
        checks.check(f"watch at {watcher_address}: created, served by that node",
                     created.created and not created.canceled
                     and created.header.node_id == status_of(clients[watcher_address]).id, created)
        expected = []
        for index in range(4):
            key, value = prefix + str(index % 3).encode(), f"value-{index}".encode()
            put = writer.Put(kv_pb2.PutRequest(key=key, value=value), timeout=TIMEOUT_SECONDS)
            expected.append((kv_pb2.EVENT_TYPE_PUT, key, value, put.header.revision))
        writer.Put(kv_pb2.PutRequest(key=prefix[:-1] + b"0", value=b"outside"), timeout=TIMEOUT_SECONDS)
        deleted = writer.Delete(kv_pb2.DeleteRequest(key=prefix + b"1"), timeout=TIMEOUT_SECONDS)
        expected.append((kv_pb2.EVENT_TYPE_DELETE, prefix + b"1", b"", deleted.header.revision))
        got = seen(stream.events(len(expected)))
        checks.check("watch: every put and the delete once, in order, at the revisions their headers named",
                     got == expected, f"got {got}, expected {expected}")
        revisions = [revision for _, _, _, revision in got]
        checks.check("watch: revisions strictly increase",
                     all(a < b for a, b in zip(revisions, revisions[1:])), revisions)
    finally:
        stream.close()

    resumed = WatchStream(resume_address)
    try:
        created = resumed.create(key=prefix, range_end=prefix_end(prefix), start_revision=expected[1][3])
        checks.check(f"watch at {resume_address} from revision {expected[1][3]}: created",
                     created.created and not created.canceled, created)
        got = seen(resumed.events(len(expected) - 1))
        checks.check("watch from a start revision: the history from there on, nothing before",
                     got == expected[1:], f"got {got}, expected {expected[1:]}")
    finally:
        resumed.close()


class KeepAliveStream:
    """One LeaseKeepAlive stream: a renewal in, its answer out."""

    def __init__(self, address, deadline_seconds=30.0):
        self._requests = queue.Queue()
        stub = kv_pb2_grpc.LeaseStub(grpc.insecure_channel(address))
        self._responses = stub.LeaseKeepAlive(iter(self._requests.get, None), timeout=deadline_seconds)

    def renew(self, lease_id):
        self._requests.put(kv_pb2.LeaseKeepAliveRequest(id=lease_id))
        return next(self._responses)

    def close(self):
        self._requests.put(None)
        self._responses.cancel()


def wait_for_leases(stub, deadline_seconds=15.0):
    """A fresh cluster serves leases once its leader raised the storage
    version (FAILED_PRECONDITION until then)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            return stub.LeaseLeases(kv_pb2.LeaseLeasesRequest(), timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def lease_keep_alive(checks, clients, granter_address, renewer_address, reader):
    """Grants a lease of 2 s at one node, attaches a key, renews it on a
    keep-alive stream at another node every half second for 5 s (past two
    TTLs), checks the key survives; then stops renewing and checks the key
    disappears no earlier than the TTL after the last renewal was sent, and
    no later than the TTL plus a few seconds; a renewal after that is
    answered with TTL 0 and an error on the same stream."""
    ttl_seconds = 2
    granter = kv_pb2_grpc.LeaseStub(grpc.insecure_channel(granter_address))
    wait_for_leases(granter)
    granted = granter.LeaseGrant(kv_pb2.LeaseGrantRequest(ttl=ttl_seconds), timeout=TIMEOUT_SECONDS)
    checks.check(f"lease grant at {granter_address}: an id and the TTL asked",
                 granted.id > 0 and granted.ttl == ttl_seconds, granted)
    key = f"python-lease-{uuid.uuid4().hex[:8]}".encode()
    reader.Put(kv_pb2.PutRequest(key=key, value=b"alive", lease=granted.id), timeout=TIMEOUT_SECONDS)
    attached = granter.LeaseTimeToLive(kv_pb2.LeaseTimeToLiveRequest(id=granted.id, keys=True),
                                       timeout=TIMEOUT_SECONDS)
    checks.check("lease time to live lists the key attached",
                 list(attached.keys) == [key] and 0 < attached.ttl <= ttl_seconds, attached)

    stream = KeepAliveStream(renewer_address)
    try:
        answers = []
        last_sent = time.monotonic()
        until = last_sent + 2.5 * ttl_seconds
        while time.monotonic() < until:
            last_sent = time.monotonic()
            answers.append(stream.renew(granted.id))
            time.sleep(0.5)
        checks.check(f"keep-alive at {renewer_address}: {len(answers)} renewals over 2.5 TTLs, each the full TTL",
                     len(answers) >= 8 and all(a.id == granted.id and a.ttl == ttl_seconds and not a.error
                                               for a in answers), answers[-1])
        got = reader.Get(kv_pb2.GetRequest(key=key), timeout=TIMEOUT_SECONDS)
        checks.check("the key survives past its TTL while renewed", got.found and got.value == b"alive", got)

        # The owner stops renewing: the key must stay until the TTL has run
        # out since the last renewal was sent, then go.
        early = None
        gone_at = None
        while time.monotonic() < last_sent + ttl_seconds + 5.0:
            started = time.monotonic()
            got = reader.Get(kv_pb2.GetRequest(key=key), timeout=TIMEOUT_SECONDS)
            done = time.monotonic()
            if not got.found:
                if done < last_sent + ttl_seconds:
                    early = done - last_sent
                gone_at = started - last_sent
                break
            time.sleep(0.05)
        checks.check("the key stays until the TTL since the last renewal", early is None,
                     f"gone {early:.2f}s after the last renewal" if early is not None else "")
        checks.check("the key is gone within the TTL + 5 s of the last renewal"
                     + (f" ({gone_at:.2f} s after it)" if gone_at is not None else ""),
                     gone_at is not None, "still there")
        expired = stream.renew(granted.id)
        checks.check("a renewal of the expired lease: TTL 0 and an error, on the same stream",
                     expired.ttl == 0 and expired.error, expired)
    finally:
        stream.close()
    gone = granter.LeaseTimeToLive(kv_pb2.LeaseTimeToLiveRequest(id=granted.id), timeout=TIMEOUT_SECONDS)
    checks.check("lease time to live of the expired lease: -1", gone.ttl == -1, gone)


def main():
    endpoints = [e for e in os.environ.get("KVSTORE_ENDPOINTS", "").split(",") if e]
    raft_endpoints = [e for e in os.environ.get("KVSTORE_RAFT_ENDPOINTS", "").split(",") if e]
    if not endpoints:
        sys.exit("set KVSTORE_ENDPOINTS=HOST:PORT,... (client ports of a running cluster)")
    checks = Checks()
    clients = stubs(endpoints)

    leader_address, leader = find_leader(clients)
    followers = [address for address in endpoints if address != leader_address]
    checks.check("status: one leader", leader.role == ROLE_LEADER, leader)
    for address, stub in clients.items():
        status = status_of(stub)
        checks.check(
            f"status {address}: id, term, leader, cluster id, version",
            status.id > 0 and status.term >= 1 and status.leader_id == leader.id
            and status.cluster_id and status.version and status.header.node_id == status.id,
            status,
        )
    checks.check("status: leader reports its followers' progress",
                 len(leader.followers) == len(endpoints) - 1, leader.followers)

    key = f"python-{uuid.uuid4().hex[:8]}".encode()
    writer = clients[followers[0]] if followers else clients[leader_address]
    put = writer.Put(kv_pb2.PutRequest(key=key, value=b"hello \x00 bytes"), timeout=TIMEOUT_SECONDS)
    checks.check("put through a follower is forwarded to the leader",
                 not followers or (put.header.node_id == leader.id and put.header.forwarded_by > 0
                                   and put.header.index > 0), put.header)

    for address, stub in clients.items():
        got = stub.Get(kv_pb2.GetRequest(key=key), timeout=TIMEOUT_SECONDS)
        checks.check(f"linearizable get at {address}", got.found and got.value == b"hello \x00 bytes", got)

    # A serializable read is local: wait until this node applied the write.
    target = clients[endpoints[-1]]
    deadline = time.monotonic() + 10
    while status_of(target).applied_index < put.header.index and time.monotonic() < deadline:
        time.sleep(0.05)
    got = target.Get(kv_pb2.GetRequest(key=key, consistency=kv_pb2.CONSISTENCY_SERIALIZABLE),
                     timeout=TIMEOUT_SECONDS)
    checks.check("serializable get is served locally", got.found and got.header.forwarded_by == 0
                 and got.header.node_id == status_of(target).id, got)

    deleted = writer.Delete(kv_pb2.DeleteRequest(key=key), timeout=TIMEOUT_SECONDS)
    checks.check("delete of an existing key", deleted.deleted, deleted)
    again = writer.Delete(kv_pb2.DeleteRequest(key=key), timeout=TIMEOUT_SECONDS)
    checks.check("delete of a missing key succeeds with deleted=false", not again.deleted, again)
    got = clients[leader_address].Get(kv_pb2.GetRequest(key=key), timeout=TIMEOUT_SECONDS)
    checks.check("get after delete: not found", not got.found and got.value == b"", got)

    code = rpc_code(lambda: writer.Put(kv_pb2.PutRequest(key=b"", value=b"x"), timeout=TIMEOUT_SECONDS))
    checks.check("empty key: INVALID_ARGUMENT", code == grpc.StatusCode.INVALID_ARGUMENT, code)

    cas_loop(checks, clients, endpoints)
    prefix_range(checks, clients, writer)
    # Any node serves watches: watch at a follower, write through the leader,
    # then read the history at another node.
    watch_prefix(checks, clients, clients[leader_address],
                 followers[0] if followers else leader_address, endpoints[-1])

    # Leases: granted at a follower, renewed at another node, read anywhere.
    lease_keep_alive(checks, clients, followers[0] if followers else leader_address,
                     endpoints[-1], clients[leader_address])

    # The raft port: a stray client (wrong cluster id) is refused and changes nothing.
    for address in raft_endpoints:
        raft = raft_pb2_grpc.RaftStub(grpc.insecure_channel(address))
        header = raft_pb2.MessageHeader(cluster_id="not-this-cluster", **{"from": 99}, to=1, term=1)
        chunk = raft_pb2.InstallSnapshotChunk(
            header=header, snapshot=raft_pb2.SnapshotMetadata(index=1, term=1), done=True)
        code = rpc_code(lambda: raft.InstallSnapshot(iter([chunk]), timeout=TIMEOUT_SECONDS))
        checks.check(f"raft port {address}: a stray client is refused (FAILED_PRECONDITION)",
                     code == grpc.StatusCode.FAILED_PRECONDITION, code)
    after_leader_address, after = find_leader(clients)
    checks.check("the stray raft calls changed nothing (same leader and term)",
                 after.id == leader.id and after.term == leader.term, after)

    print(f"python client: {checks.passed} passed, {checks.failed} failed")
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
