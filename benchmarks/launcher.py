"""Starts the benchmark's child processes from a small process and reports each one's own peak RSS.

Linux carries a parent's peak RSS over fork+exec into the child's ``ru_maxrss``: a child forked
from the benchmark process (which holds a loaded model) would report at least that process's
peak. This launcher is started before the benchmark grows and runs every child itself.

Protocol: one JSON request per stdin line ``{"argv", "env", "cwd", "log"}``; one JSON reply per
stdout line ``{"started_at", "wall_s", "peak_rss_mb", "cpu_s", "returncode"}``.

``--smoke`` starts this launcher as ``run.py`` does, sends it one small child and prints the reply.
"""

import json
import os
import subprocess
import sys
import time


def main() -> int:
    for line in sys.stdin:
        request = json.loads(line)
        started_at = time.time()
        t = time.perf_counter()
        with open(request["log"], "w") as out:
            proc = subprocess.Popen(
                request["argv"], env=request["env"], cwd=request["cwd"], stdout=out, stderr=subprocess.STDOUT
            )
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        reply = {
            "started_at": started_at,
            "wall_s": time.perf_counter() - t,
            "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
            # User and system CPU seconds of the child (every thread): steadier than wall time
            # when other processes share the cores.
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "returncode": proc.returncode,
        }
        print(json.dumps(reply), flush=True)
    return 0


def smoke() -> int:
    """One request through a launcher process of its own, as run.py sends them."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        launcher = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        request = {"argv": [sys.executable, "-c", "print(sum(range(10)))"], "env": dict(os.environ), "cwd": tmp,
                   "log": os.path.join(tmp, "child.log")}
        reply, _ = launcher.communicate(json.dumps(request) + "\n", timeout=60)
        with open(request["log"]) as log:
            printed = log.read().strip()
    print(reply.strip())
    return 0 if launcher.returncode == 0 and json.loads(reply)["returncode"] == 0 and printed == "45" else 1


if __name__ == "__main__":
    sys.exit(smoke() if sys.argv[1:] == ["--smoke"] else main())
