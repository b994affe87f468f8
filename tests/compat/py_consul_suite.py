"""Drives muster agents with the real `py-consul` client library, as a Consul user would.

Usage: python3 py_consul_suite.py HOST:PORT [HOST:PORT ...]
The first agent is written to; every agent must then answer for the whole cluster.
Exits non-zero with a message on the first failed expectation.
"""
import sys
import threading
import time

import consul


def wait_until(what, cond, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def client(addr):
    host, port = addr.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port))


def main(addrs):
    writer = client(addrs[0])
    readers = [client(a) for a in addrs]

    # Register with a TTL check (py-consul sends lowercase keys: muster matches them).
    writer.agent.service.register(
        "pyweb", service_id="pyweb-1", address="127.0.0.1", port=8080,
        tags=["py", "v1"], meta={"lang": "python"},
        check=consul.Check.ttl("30s"),
    )
    services = writer.agent.services()
    assert services["pyweb-1"]["Service"] == "pyweb", services
    assert services["pyweb-1"]["Port"] == 8080

    # Every agent answers catalog.service with Consul's field names.
    for r in readers:
        wait_until("catalog.service on every agent",
                   lambda r=r: len(r.catalog.service("pyweb")[1]) == 1)
        idx, nodes = r.catalog.service("pyweb")
        assert int(idx) > 0
        assert nodes[0]["ServiceID"] == "pyweb-1", nodes
        assert nodes[0]["ServicePort"] == 8080
        assert sorted(nodes[0]["ServiceTags"]) == ["py", "v1"]
        assert nodes[0]["ServiceMeta"] == {"lang": "python"}
        _, tagged = r.catalog.service("pyweb", tag="py")
        assert len(tagged) == 1
        _, none = r.catalog.service("pyweb", tag="nope")
        assert none == []

    # New TTL checks start critical: health.service(passing=True) hides the instance.
    for r in readers:
        _, healthy = r.health.service("pyweb", passing=True)
        assert healthy == [], healthy
    idx_before, _ = readers[-1].health.service("pyweb", passing=True)

    # A blocking call with index on the last agent wakes when the check passes on the first.
    result = {}

    def blocked():
        t = time.time()
        result["answer"] = readers[-1].health.service("pyweb", passing=True, index=idx_before, wait="30s")
        result["took"] = time.time() - t

    th = threading.Thread(target=blocked)
    th.start()
    time.sleep(0.5)
    assert th.is_alive(), "blocking query returned before any change"
    writer.agent.check.ttl_pass("service:pyweb-1", notes="ok")
    th.join(timeout=35)
    assert not th.is_alive(), "blocking query never woke"
    idx_after, healthy = result["answer"]
    assert int(idx_after) > int(idx_before), (idx_before, idx_after)
    assert len(healthy) == 1 and healthy[0]["Service"]["ID"] == "pyweb-1", healthy
    assert result["took"] < 30, "woke only at the wait deadline"

    for r in readers:
        wait_until("passing instance on every agent",
                   lambda r=r: len(r.health.service("pyweb", passing=True)[1]) == 1)

    # A blocking call with nothing changing waits for its wait time.
    idx, _ = readers[0].health.service("pyweb", passing=True)
    t = time.time()
    idx2, _ = readers[0].health.service("pyweb", passing=True, index=idx, wait="1s")
    assert time.time() - t >= 0.9 and idx2 == idx

    # Members: every agent sees every member alive.
    for r in readers:
        wait_until("all members alive",
                   lambda r=r: sum(1 for m in r.agent.members() if m["Status"] == 1) == len(addrs))

    # Deregister: gone everywhere.
    writer.agent.service.deregister("pyweb-1")
    for r in readers:
        wait_until("deregistration on every agent",
                   lambda r=r: r.catalog.service("pyweb")[1] == [])
    print(f"py-consul suite passed against {len(addrs)} agent(s)")


if __name__ == "__main__":
    main(sys.argv[1:])
