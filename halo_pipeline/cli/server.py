"""`halo-pipeline server`: the local Prefect server and UI (foreground, or the background one's status / stop)."""

from __future__ import annotations

import argparse
from typing import Any

from halo_pipeline.cli.common import prefect_env


def add_parser(sub: Any) -> None:
    s = sub.add_parser("server", help="start a local Prefect server + UI on loopback (for schedules)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=4200)
    s.add_argument("--stop", action="store_true", help="stop the background server that `run` started")
    s.add_argument("--status", action="store_true", help="print the background server's UI and API address (exit 1 if none runs)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prefect_env()
    from halo_pipeline.orchestration import local_server

    if args.stop:
        print("stopped" if local_server.stop_background() else "no background server was running")
        return 0
    if args.status:  # the background server `run` started: where its API and UI are
        url = local_server.running_server()
        if url is None:
            print("no background server is running (the next `halo-pipeline run` starts one)")
            return 1
        print(f"background Prefect server: UI {local_server.ui_url(url)}  API {url}  (stop it with: halo-pipeline server --stop)")
        return 0
    return local_server.serve_foreground(args.host, args.port)
