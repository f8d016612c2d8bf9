#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Bare QMP live migration: the baseline that tests/bench/bench-migrate.sh
measures vm-migrate against.  Standard library only.

    qmp-migrate.py --pid PID --qmp SOCKET --run-dir DIR [--connections N]
                   [--address 127.0.0.1] [--timeout SECONDS]

It does at the QEMU level what vm-migrate does (lib/hv_qemu.c, lib/migrate.c)
and nothing else (no database, no lease, no capability probing):

  1. read the source's exact command line from /proc/PID/cmdline;
  2. start the receiver with that command line, its per-VMM paths (serial
     log, QMP and guest agent sockets, which live in the source's run dir)
     moved to DIR, its -name changed, plus `-incoming defer`;
  3. on the receiver: qmp_capabilities; with N > 1 multifd on and
     multifd-channels N; migrate-incoming tcp:ADDRESS:0, the port read back
     from query-migrate;
  4. on the source: multifd on/off as N says; max-bandwidth 32 GiB/s
     (VMOPS_MIGRATE_DEFAULT_BANDWIDTH in lib/hv.h), multifd-channels N when
     N > 1, downtime-limit left at QEMU's default; migrate;
  5. query-migrate every 100 ms until completed (or failed/cancelled);
  6. query-status on the receiver until it runs (as vm-migrate checks);
  7. quit the source and wait for its process to be gone.

Prints one JSON object on stdout (status, wall_ms, downtime_ms,
total_time_ms, transferred_bytes, throughput_bps, receiver pid, serial log).
The receiver is left running, like vm-migrate leaves the target; its pid is
also written to DIR/pid as soon as it is started, so a caller can always
clean up.  On failure the migration is cancelled, the receiver killed, and
the exit status is 1.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

BANDWIDTH = 32 << 30  # VMOPS_MIGRATE_DEFAULT_BANDWIDTH


class QMPError(Exception):
    pass


class QMP:
    def __init__(self, path, deadline):
        self.sock = None
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                self.sock = s
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise QMPError("%s: no QMP socket" % path)
                time.sleep(0.01)
        self.buf = b""
        self.deadline = deadline
        self.next_id = 0
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise QMPError("QMP timeout")
            self.sock.settimeout(left)
            d = self.sock.recv(65536)
            if not d:
                raise QMPError("QMP connection closed")
            self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, args=None):
        self.next_id += 1
        m = {"execute": name, "id": self.next_id}
        if args is not None:
            m["arguments"] = args
        self.sock.sendall(json.dumps(m).encode() + b"\n")
        while True:
            r = self._read()
            if "event" in r:
                continue
            if r.get("id") != self.next_id:
                continue
            if "error" in r:
                raise QMPError("%s: %s" % (name, r["error"].get("desc")))
            return r.get("return")

    def close(self):
        if self.sock:
            self.sock.close()
            self.sock = None


def proc_gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return True
    return st[st.rindex(")") + 2] in "ZX"


def receiver_argv(src, src_run_dir, run_dir):
    out = []
    prev = None
    for a in src:
        if prev == "-name":
            a = "vmops-bench-bare"
        elif src_run_dir + "/" in a:
            a = a.replace(src_run_dir + "/", run_dir + "/")
        elif a == "-incoming":
            raise SystemExit("qmp-migrate: the source was itself started with -incoming")
        out.append(a)
        prev = a
    return out + ["-incoming", "defer"]


def main():
    p = argparse.ArgumentParser(description="live-migrate a QEMU VM over bare QMP")
    p.add_argument("--pid", type=int, required=True, help="source QEMU pid")
    p.add_argument("--qmp", required=True, help="source QMP socket")
    p.add_argument("--run-dir", required=True, help="receiver run dir (created)")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--timeout", type=float, default=600.0)
    o = p.parse_args()
    t0 = time.monotonic()
    deadline = t0 + o.timeout
    res = {"status": "failed", "connections": o.connections}

    with open("/proc/%d/cmdline" % o.pid, "rb") as f:
        src_argv = [a.decode() for a in f.read().split(b"\0") if a]
    src_run_dir = os.path.dirname(os.path.abspath(o.qmp))
    run_dir = os.path.abspath(o.run_dir)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    argv = receiver_argv(src_argv, src_run_dir, run_dir)
    rqmp_path = os.path.join(run_dir, "qmp.sock")
    if rqmp_path not in " ".join(argv):
        raise SystemExit("qmp-migrate: cannot find the QMP socket %s in the source's command line" % o.qmp)

    log = open(os.path.join(run_dir, "qemu.log"), "wb")
    recv = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    with open(os.path.join(run_dir, "pid"), "w") as f:
        f.write("%d\n" % recv.pid)
    res["receiver_pid"] = recv.pid
    res["serial_log"] = os.path.join(run_dir, "serial.log")
    src = tgt = None
    try:
        tgt = QMP(rqmp_path, min(deadline, time.monotonic() + 30))
        tgt.deadline = deadline
        n = o.connections
        if n > 1:
            tgt.cmd("migrate-set-capabilities",
                    {"capabilities": [{"capability": "multifd", "state": True}]})
            tgt.cmd("migrate-set-parameters", {"multifd-channels": n})
        tgt.cmd("migrate-incoming", {"uri": "tcp:%s:0" % o.address})
        uri = None
        for sa in tgt.cmd("query-migrate").get("socket-address", []):
            if sa.get("type") == "inet":
                uri = "tcp:%s:%s" % (sa["host"], sa["port"])
                break
        if not uri:
            raise QMPError("receiver: no listening address")

        src = QMP(o.qmp, min(deadline, time.monotonic() + 5))
        src.deadline = deadline
        src.cmd("migrate-set-capabilities",
                {"capabilities": [{"capability": "multifd", "state": n > 1}]})
        params = {"max-bandwidth": BANDWIDTH}
        if n > 1:
            params["multifd-channels"] = n
        src.cmd("migrate-set-parameters", params)
        src.cmd("migrate", {"uri": uri})
        while True:
            m = src.cmd("query-migrate")
            st = m.get("status", "")
            if st in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise QMPError("timeout")
            time.sleep(0.1)
        res["hv_status"] = st
        if st != "completed":
            raise QMPError("migration %s: %s" % (st, m.get("error-desc", "")))
        ram = m.get("ram", {})
        res["downtime_ms"] = m.get("downtime")
        res["total_time_ms"] = m.get("total-time")
        res["setup_time_ms"] = m.get("setup-time")
        res["transferred_bytes"] = ram.get("transferred")
        res["multifd_bytes"] = ram.get("multifd-bytes")
        if m.get("total-time"):
            res["throughput_bps"] = ram.get("transferred", 0) * 1000.0 / m["total-time"]
        for _ in range(50):
            if tgt.cmd("query-status").get("running"):
                break
            time.sleep(0.1)
        else:
            raise QMPError("receiver not running after completion")
        try:
            src.cmd("quit")
        except QMPError:
            pass  # the reply may be lost as QEMU exits
        src.close()
        while not proc_gone(o.pid):
            if time.monotonic() > deadline:
                raise QMPError("source pid %d did not exit" % o.pid)
            time.sleep(0.01)
        res["status"] = "completed"
    except (QMPError, OSError) as e:
        res["error"] = str(e)
        try:
            if src:
                src.deadline = time.monotonic() + 5
                src.cmd("migrate_cancel")
        except (QMPError, OSError):
            pass
        recv.kill()
        recv.wait()
    finally:
        if src:
            src.close()
        if tgt:
            tgt.close()
    res["wall_ms"] = int((time.monotonic() - t0) * 1000)
    print(json.dumps(res))
    return 0 if res["status"] == "completed" else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    sys.exit(main())
