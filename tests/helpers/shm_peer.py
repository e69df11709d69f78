"""Another process of a multi_process_hash_map test: ``HPS(config)`` over the same shared-memory
segment, driven by JSON lines on stdin (one answer line each on stdout).

    python shm_peer.py CONFIG.json [--stall-load]

First line out: ``{"ready": true, "pid": ..., "log": [...], "memory": {...}}`` (the runtime's log
messages of the start-up; RSS, USS and PSS before ``HPS`` was built). ``--stall-load``: after
the first chunk of the volatile load, print ``{"loading": true}`` and sleep (the test kills the
process there).

Commands: ``{"op": "lookup", "table": t, "keys": [...]}`` → ``{"rows": [[...], ...]}``;
``insert`` (``keys``, ``vectors``); ``remove`` (``keys``); ``touch_all`` (look up every key of
table ``t`` once, so that every page of it is mapped here) → ``{"keys": n}``; ``close``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import numpy as np
import psutil
from hps_cli.runtime import HPS
from hps_cli.runtime.table import TableReader


class _Remember(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _stall_after_first_chunk():
    def progress(_bytes: int) -> None:
        print(json.dumps({"loading": True}), flush=True)
        time.sleep(3600)

    return progress


def main() -> None:
    config_path = sys.argv[1]
    log = _Remember()
    logger = logging.getLogger("hps_cli.runtime")
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    progress = _stall_after_first_chunk() if "--stall-load" in sys.argv else None
    memory = psutil.Process().memory_full_info()
    hps = HPS(config_path, progress=progress)
    model = hps.config.models[0]
    before = {"rss": memory.rss, "uss": memory.uss, "pss": memory.pss}
    print(json.dumps({"ready": True, "pid": os.getpid(), "log": log.messages, "memory": before}))
    sys.stdout.flush()
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        answer: dict = {"ok": True}
        if op == "lookup":
            rows = hps.lookup(
                np.array(command["keys"], dtype=np.int64), model.model, command["table"]
            )
            answer["rows"] = rows.tolist()
        elif op == "insert":
            hps.insert(
                model.model,
                command["table"],
                np.array(command["keys"], dtype=np.int64),
                np.array(command["vectors"], dtype=np.float32),
            )
        elif op == "remove":
            hps.remove(model.model, command["table"], np.array(command["keys"], dtype=np.int64))
        elif op == "touch_all":
            table_id = model.table_id(command["table"])
            with TableReader(model.table_path(table_id)) as reader:
                keys = np.array(reader.keys())
            for start in range(0, keys.size, 4096):  # a server's batch size
                hps.lookup(keys[start : start + 4096], model.model, command["table"])
            answer["keys"] = int(keys.size)
        elif op == "close":
            hps.close()
            print(json.dumps(answer), flush=True)
            return
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
