"""Child process for test_durability: persists PUBLISHes under load and prints one line per
*acknowledged* (committed) message, until it is killed with SIGKILL."""

from __future__ import annotations

import json
import sys

import trio

from kefu.config.model import Storage
from kefu.storage import SessionRecord, StoredMessage, SubscriptionRecord, open_store
from kefu.storage.crypto import MasterKey


async def main() -> None:
    cfg = Storage(**json.loads(sys.argv[1]))
    master = MasterKey(bytes.fromhex(sys.argv[2]), "test")
    async with open_store(cfg, master=master, background=False) as store:
        await store.save_session(SessionRecord("sub-1", 5, 0xFFFFFFFF, (SubscriptionRecord("load/#", 1),),
                                               connected=False, disconnected_at=1.0))
        await store.persist_publish(StoredMessage("status/kefu", b"online", retain=True))
        print("READY", flush=True)

        async def publisher(p: int) -> None:
            i = 0
            while True:
                payload = f"{p}:{i}"
                mid = await store.persist_publish(StoredMessage(f"load/{p}", payload.encode()), [("sub-1", 1)])
                print(f"ACK {mid} {payload}", flush=True)  # only after the commit returned
                i += 1

        async with trio.open_nursery() as nursery:
            for p in range(50):
                nursery.start_soon(publisher, p)


if __name__ == "__main__":
    trio.run(main)
