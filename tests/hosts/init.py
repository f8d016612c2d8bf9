#!/usr/bin/env python3
# PID 1 of one test host (tests/hosts/with-hosts.sh): runs that host's sshd,
# reaps every orphan (the VMMs a remote launch leaves behind end up here),
# and stops or restarts sshd on a signal from outside:
#   SIGUSR1  stop sshd: the listener and every session (the host stays up,
#            its processes run on, but nobody can reach it over ssh)
#   SIGUSR2  start sshd again
# /proc is this host's own (unshare --mount-proc): only its processes.
import os
import signal
import subprocess
import sys
import time

cfg, log = sys.argv[1], sys.argv[2]
sshd = None


def start(*_):
    global sshd
    if sshd is None or sshd.poll() is not None:
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", cfg, "-E", log],
                                stdin=subprocess.DEVNULL)


def stop(*_):
    # Every sshd process of this host: the listener and its sessions.
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % pid) as f:
                comm = f.read().strip()
            if comm == "sshd":
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


signal.signal(signal.SIGUSR1, stop)
signal.signal(signal.SIGUSR2, start)
start()
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(0.2)
