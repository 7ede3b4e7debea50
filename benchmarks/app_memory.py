"""Memory of the web page's server over many requests (resident set size of the server process).

    python benchmarks/app_memory.py --requests 200 [--size 256] [--kind normals|create|both]

Starts `diff2in1 app` with the demo weights (untrained head, no training) in a child process on
the CPU, sends the requests with gradio_client, prints the server's RSS every 20 requests, then
stops the server with SIGTERM and reports whether its work folder was removed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--size", type=int, default=256, help="side of the uploaded test images")
    ap.add_argument(
        "--varied", action="store_true", help="a new image size every request (--size to 4 x --size a side)"
    )
    ap.add_argument("--kind", choices=["normals", "create", "both"], default="both")
    a = ap.parse_args()
    from gradio_client import Client, handle_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="app-memory-"))
    env = {**os.environ, "TMPDIR": str(work), "GRADIO_TEMP_DIR": str(work / "gradio")}
    cmd = [sys.executable, "-m", "diff2in1.cli", "--threads", "1", "app", "--demo-steps", "0"]
    server = subprocess.Popen(
        [*cmd, "--port", str(port), "--device", "cpu"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        for line in server.stderr:
            if "page on" in line:
                break
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        rng = np.random.default_rng(0)
        images = []
        for i in range(4):
            p = work / f"in_{i}.png"
            Image.fromarray(rng.integers(0, 255, (a.size, a.size + 32 * i, 3), np.uint8)).save(p)
            images.append(p)
        sizes = f"{a.size}-{4 * a.size} px (varied)" if a.varied else f"{a.size} px"
        print(f"requests,rss_mb  (server pid {server.pid}, {a.kind}, {sizes} uploads)")
        print(f"0,{rss_mb(server.pid):.0f}")
        t0 = time.time()
        for r in range(1, a.requests + 1):
            src = images[r % len(images)]
            if a.varied:  # every request another shape: what a page's users send
                h, w = (int(v) for v in rng.integers(a.size, 4 * a.size, 2))
                src = work / f"in_{r}.png"
                Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(src)
            img = handle_file(str(src))
            if a.kind == "normals" or (a.kind == "both" and r % 2):
                client.predict([img], 0, "squash", 1, api_name="/predict")
            else:
                client.predict(img, "a room", 600, 6, 1, r, api_name="/create")
            if r % 20 == 0:
                print(f"{r},{rss_mb(server.pid):.0f}", flush=True)
        print(f"({time.time() - t0:.0f} s)")
        workdirs = [p for p in work.iterdir() if p.name.startswith("diff2in1-app-")]
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        left = [p for p in workdirs if p.exists()]
        print(f"SIGTERM: exit {server.returncode}; work folder left behind: {bool(left)}")
    finally:
        if server.poll() is None:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
