"""Micro-benchmark of the subscription trie and the authenticator (one command, one table).

    .venv/bin/python benchmarks/topics_auth_bench.py [--subs 10000]

Measures, in-process and single-threaded (what the router's publish path pays):
matching a topic against N subscriptions (uncached walk and cached), subscribe /
unsubscribe churn, memory per subscription, ACL decisions (first evaluation and cached),
and password checks (scrypt, and a repeat login served from the HMAC cache).
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

from kefu.broker.auth import Authenticator, hash_password
from kefu.broker.topics import TopicTrie
from kefu.config.model import AclRule, Auth, User


def rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t0)


def build(trie: TopicTrie, n: int) -> None:
    for i in range(n):
        trie.add(f"devices/{i}/in", f"c{i}", 1)
        trie.add(f"devices/{i}/+/state", f"c{i}", 1)
    trie.add("devices/#", "monitor", 0)
    trie.add("$share/workers/devices/+/in", "w1", 0)
    trie.add("$share/workers/devices/+/in", "w2", 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subs", type=int, default=10000, help="devices (two subscriptions each)")
    args = ap.parse_args()
    n = args.subs
    rows: list[tuple[str, str]] = []
    rnd = random.Random(1)
    topics = [f"devices/{rnd.randrange(n)}/in" for _ in range(1000)]
    deep = [f"devices/{rnd.randrange(n)}/sensor/state" for _ in range(1000)]

    uncached = TopicTrie(cache_size=0)
    cached = TopicTrie()
    build(uncached, n)
    build(cached, n)
    subs = len(uncached)

    def match(trie, ts):
        def run(k):
            m = trie.match_all
            for i in range(k):
                m(ts[i % 1000])
        return run

    rows.append((f"match, {subs} subs, 3 hits, uncached", f"{rate(match(uncached, topics), 200_000):,.0f} /s"))
    rows.append((f"match, {subs} subs, 4 levels, uncached", f"{rate(match(uncached, deep), 200_000):,.0f} /s"))
    match(cached, topics)(1000)
    rows.append((f"match, {subs} subs, cached", f"{rate(match(cached, topics), 1_000_000):,.0f} /s"))

    churn = TopicTrie()
    build(churn, n)

    def sub_unsub(k):
        for i in range(k):
            f = f"devices/{i % n}/x/+"
            churn.add(f, "tmp", 0)
            churn.remove(f, "tmp")

    rows.append(("subscribe + unsubscribe (wildcard filter)", f"{rate(sub_unsub, 100_000):,.0f} pairs/s"))

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    mem = TopicTrie()
    build(mem, n)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    rows.append(("memory per subscription", f"{(after - before) / len(mem):,.0f} bytes"))

    rules = [AclRule(action="publish", topic=f"blocked/{i}/#", permission="deny") for i in range(18)]
    rules += [AclRule(topic="devices/%c/#"), AclRule(action="subscribe", topic="news/#")]
    auth = Authenticator(Auth(acl=rules, acl_default="deny"))

    def acl_first(k):
        for i in range(k):
            auth.forget("dev")
            auth.authorize("dev", None, "publish", f"devices/dev/{i}")

    def acl_cached(k):
        for _ in range(k):
            auth.authorize("dev", None, "publish", "devices/dev/state")

    rows.append(("ACL decision, 20 rules, first time", f"{rate(acl_first, 50_000):,.0f} /s"))
    rows.append(("ACL decision, cached", f"{rate(acl_cached, 1_000_000):,.0f} /s"))

    h = hash_password("pw")
    users = Authenticator(Auth(users=[User("alice", h)]))
    t0 = time.perf_counter()
    users.authenticate("c", "alice", b"pw")
    rows.append(("password check, scrypt N=2^14 r=8", f"{(time.perf_counter() - t0) * 1000:.1f} ms"))
    k = 10_000
    t0 = time.perf_counter()
    for _ in range(k):
        users.authenticate("c", "alice", b"pw")
    rows.append(("repeat login (HMAC cache)", f"{(time.perf_counter() - t0) / k * 1e6:.1f} us"))

    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  result")
    print(f"{'-' * width}  {'-' * 16}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
