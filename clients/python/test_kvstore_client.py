#!/usr/bin/env python3
"""Drives a running kvstore cluster with a Python client generated from proto/.

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
