#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Bare QMP restore: the baseline that tests/bench/bench-snapshot.sh
measures `snapshot-prep restore` against.  Standard library only.

    qmp-restore.py --argv FILE --src-run-dir DIR [--src-disk PATH --disk PATH] --state FILE
                   --run-dir DIR [--timeout SECONDS]

It does at the QEMU level what a restore must do with the state already
uncompressed on disk (no bundle, no checksums, no database):

  1. take the source VM's exact command line (FILE: /proc/PID/cmdline of the
     VM the snapshot was taken of, NUL-separated), move its per-VMM paths
     (serial log, QMP and guest agent sockets in the source's run dir) to
     DIR, its -drive from --src-disk to --disk (a copy of the snapshot's
     disk, made by the caller beforehand), change -name, add `-S -incoming defer`
     (what lib/hv_qemu.c adds for a restore);
  2. qmp_capabilities; open the state file and pass it over the QMP socket
     (getfd with SCM_RIGHTS); migrate-incoming fd:NAME;
  3. query-migrate until completed (polling 5, 10, ... 100 ms, as
     lib/hv_qemu_snapshot.c does);
  4. cont, then query-status until it runs;
  5. thaw the guest's filesystems through its agent (guest-sync, then
     guest-fsfreeze-thaw): the snapshot was taken frozen, and
     snapshot-prep restore thaws too before it returns.

Prints one JSON object on stdout: status, pid, and epoch milliseconds of
each step (launched, qmp, loaded, running, thawed) plus wall_ms.  The VM is
left running; its pid is in DIR/pid as soon as it is started, so a caller
can always clean up.  On failure the VM is killed and the exit status is 1.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time


class QMPError(Exception):
    pass


def now_ms():
    return int(time.time() * 1000)


class Chan:
    """A line-based JSON channel over a UNIX socket (QMP or the guest agent)."""

    def __init__(self, path, deadline):
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise QMPError("%s: cannot connect" % path)
                time.sleep(0.01)
        self.sock, self.buf, self.deadline, self.next_id = s, b"", deadline, 0

    def read(self):
        while b"\n" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise QMPError("timeout")
            self.sock.settimeout(left)
            d = self.sock.recv(65536)
            if not d:
                raise QMPError("connection closed")
            self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line) if line.strip() else {}

    def cmd(self, name, args=None, fds=None):
        self.next_id += 1
        m = {"execute": name, "id": self.next_id}
        if args is not None:
            m["arguments"] = args
        data = json.dumps(m).encode() + b"\n"
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.sendall(data)
        while True:
            r = self.read()
            if "event" in r or r.get("id") != self.next_id:
                continue
            if "error" in r:
                raise QMPError("%s: %s" % (name, r["error"].get("desc")))
            return r.get("return")


def restore_argv(src, src_run_dir, run_dir, src_disk, disk):
    out, prev = [], None
    for a in src:
        if prev == "-name":
            a = "vmops-bench-bare-restore"
        elif prev == "-drive" and src_disk:
            # file=PATH,format=raw,... (lib/hv_qemu.c; our paths have no ',')
            if not a.startswith("file=%s," % src_disk):
                raise SystemExit("qmp-restore: unexpected -drive %s" % a)
            a = "file=%s,%s" % (disk, a[len("file=%s," % src_disk):])
        elif src_run_dir + "/" in a:
            a = a.replace(src_run_dir + "/", run_dir + "/")
        elif a in ("-incoming", "-S"):
            raise SystemExit("qmp-restore: the source command line already has %s" % a)
        out.append(a)
        prev = a
    return out + ["-S", "-incoming", "defer"]


def main():
    p = argparse.ArgumentParser(description="restore a QEMU VM from a migration stream over bare QMP")
    p.add_argument("--argv", required=True, help="the source's /proc/PID/cmdline, saved")
    p.add_argument("--src-run-dir", required=True)
    p.add_argument("--src-disk", help="the source's disk image, as in its command line")
    p.add_argument("--disk", help="the disk image the restored VM runs on (instead)")
    p.add_argument("--state", required=True, help="the uncompressed migration stream")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--timeout", type=float, default=600.0)
    o = p.parse_args()
    t0 = time.monotonic()
    res = {"status": "failed", "start": now_ms()}
    deadline = t0 + o.timeout
    with open(o.argv, "rb") as f:
        src = [a.decode() for a in f.read().split(b"\0") if a]
    run_dir = os.path.abspath(o.run_dir)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    if bool(o.src_disk) != bool(o.disk):
        raise SystemExit("qmp-restore: --src-disk and --disk go together")
    argv = restore_argv(src, os.path.abspath(o.src_run_dir), run_dir, o.src_disk, o.disk)
    log = open(os.path.join(run_dir, "qemu.log"), "wb")
    vm = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
    log.close()
    with open(os.path.join(run_dir, "pid"), "w") as f:
        f.write("%d\n" % vm.pid)
    res["pid"], res["launched"] = vm.pid, now_ms()
    q = None
    try:
        q = Chan(os.path.join(run_dir, "qmp.sock"), min(deadline, time.monotonic() + 60))
        q.read()  # greeting
        q.cmd("qmp_capabilities")
        res["qmp"] = now_ms()
        fd = os.open(o.state, os.O_RDONLY | os.O_CLOEXEC)
        try:
            q.cmd("getfd", {"fdname": "bench-restore"}, fds=[fd])
        finally:
            os.close(fd)
        q.cmd("migrate-incoming", {"uri": "fd:bench-restore"})
        pause = 0.005
        while True:
            m = q.cmd("query-migrate")
            st = m.get("status", "")
            if st == "completed":
                break
            if st in ("failed", "cancelled"):
                raise QMPError("load %s: %s" % (st, m.get("error-desc", "")))
            if time.monotonic() > deadline:
                raise QMPError("load: timeout (%s)" % st)
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
        res["loaded"] = now_ms()
        if q.cmd("query-status").get("running"):
            raise QMPError("the vm runs before cont")
        q.cmd("cont")
        while not q.cmd("query-status").get("running"):
            if time.monotonic() > deadline:
                raise QMPError("not running after cont")
            time.sleep(0.01)
        res["running"] = now_ms()
        g = Chan(os.path.join(run_dir, "qga.sock"), min(deadline, time.monotonic() + 30))
        g.deadline = min(deadline, time.monotonic() + 60)
        g.cmd("guest-sync", {"id": os.getpid()})
        res["thawed_filesystems"] = g.cmd("guest-fsfreeze-thaw")
        g.sock.close()
        res["thawed"] = now_ms()
        res["status"] = "running"
    except (QMPError, OSError, ValueError) as e:
        res["error"] = str(e)
        vm.kill()
        vm.wait()
    finally:
        if q:
            q.sock.close()
    res["wall_ms"] = int((time.monotonic() - t0) * 1000)
    print(json.dumps(res))
    return 0 if res["status"] == "running" else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    sys.exit(main())
