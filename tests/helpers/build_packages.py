"""Build several inference packages in one process (one TensorFlow start-up for all).

    python tests/helpers/build_packages.py SOURCE=OUT_DIR [SOURCE=OUT_DIR ...]

``hps_cli.build_graph.build_graph`` for each pair, as ``hps build-graph SOURCE OUT_DIR`` does;
prints one JSON line per pair: ``{"source", "out_dir", "ok", "error", "warnings"}``.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from hps_cli.runtime.errors import HpsError  # noqa: E402

from hps_cli.build_graph import build_graph  # noqa: E402

for arg in sys.argv[1:]:
    source, out_dir = arg.split("=", 1)
    doc = {"source": source, "out_dir": out_dir, "ok": False, "error": None, "warnings": []}
    try:
        doc["warnings"] = build_graph(source, out_dir).warnings
        doc["ok"] = True
    except HpsError as exc:
        doc["error"] = f"{exc} (hint: {exc.hint})"
    print(json.dumps(doc), flush=True)
