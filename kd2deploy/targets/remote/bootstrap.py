"""Runs on the target as ``python -c <this file> WORKDIR TIMEOUT_S`` with a .tar.gz bundle on stdin.

Standard library only, Python 3.8+. It makes a fresh temporary folder (under WORKDIR, or the target's TMPDIR /
/tmp when WORKDIR is empty), unpacks the bundle there, runs ``agent.py job.json result.json`` in its own process
group with a time limit, prints the result as one ``KD2DEPLOY-RESULT {json}`` line on stdout and removes the
folder whatever happened (a timeout, a killed agent, a full disk, SIGTERM/SIGHUP, or a dropped connection: a
heartbeat line on stdout every 2 s fails to write once ssh is gone).
"""
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

MARK = "KD2DEPLOY-RESULT "
HEARTBEAT_S = 2.0  # a line on stdout this often; a write that fails means ssh is gone


def say(doc):
    sys.stdout.write(MARK + json.dumps(doc) + "\n")
    sys.stdout.flush()


def stop(signum, frame):
    raise SystemExit(128 + signum)


def main():
    workdir = sys.argv[1] or None
    timeout = float(sys.argv[2])
    data = sys.stdin.buffer.read()
    try:
        tmp = tempfile.mkdtemp(prefix="kd2deploy-", dir=workdir)
    except OSError as e:
        say({"error": "disk_full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "workdir",
             "detail": f"{e.strerror} ({workdir or tempfile.gettempdir()})"})
        return
    proc = None
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, stop)
    try:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:
                    tar.extractall(tmp)
        except OSError as e:
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            say({"error": "disk_full" if full else "write", "detail": f"{e.strerror} in {tmp}",
                 "bundle_bytes": len(data), "free_bytes": shutil.disk_usage(tmp).free})
            return
        result = os.path.join(tmp, "result.json")
        proc = subprocess.Popen([sys.executable, os.path.join(tmp, "agent.py"), os.path.join(tmp, "job.json"),
                                 result], cwd=tmp, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                                start_new_session=True)
        say({"started": proc.pid, "tmp": tmp})
        deadline = time.monotonic() + timeout
        while True:
            try:
                rc = proc.wait(timeout=max(0.0, min(HEARTBEAT_S, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                say({"error": "timeout", "timeout_s": timeout})
                return
            try:  # the connection is gone when this fails: stop the agent (finally removes the folder)
                sys.stdout.write("KD2DEPLOY-ALIVE\n")
                sys.stdout.flush()
            except OSError:
                return
        if rc < 0:
            say({"error": "killed", "signal": signal.Signals(-rc).name})
        elif not os.path.exists(result):
            say({"error": "agent", "returncode": rc})
        else:
            with open(result, encoding="utf-8") as f:
                say(json.load(f))
    finally:
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


main()
