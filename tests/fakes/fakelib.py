# SPDX-License-Identifier: MIT
"""Shared machinery of the hypervisor fakes (a test tool, never installed).

An HTTP/1.1 server on a UNIX socket, a route table that is the single
source of truth for what a fake serves (the conformance test reads it),
request-body validation against the carried OpenAPI document, a request
log (JSON lines, for call-order assertions) and fault injection.

Faults: VMOPS_FAKE_FAULT (or --fault, repeatable) is a comma-separated list
of CALL:MODE, CALL being a route's call name ("vm.pause" for Cloud
Hypervisor, "PATCH /vm" for Firecracker), MODE one of
  error  answer with the hypervisor's error status and body
  hang   never answer (the connection stays open)
  slow   answer after VMOPS_FAKE_SLOW_MS (default 2000) ms
  drop   close the connection without answering
Modes may carry a count ("vm.pause:error:1"): only the first N calls fail.
Faults can also be armed while the fake runs: write them, one a line, to
SOCK.fault; the fake reads (and removes) that file before each request.

VMOPS_FAKE_CONSOLE_BPS=N: while the VM runs, its guest prints N bytes a
second of numbered lines on its console (Firecracker: the VMM's stdout;
Cloud Hypervisor: where config.json's serial says), for the log-cap tests.
"""

import http.server
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def spec_path(name):
    return os.path.join(HERE, "specs", name)


class Spec:
    """The carried OpenAPI/Swagger document, for routes and body schemas."""

    def __init__(self, name):
        with open(spec_path(name)) as f:
            self.doc = yaml.safe_load(f)
        self.schemas = (self.doc.get("components", {}).get("schemas")
                        or self.doc.get("definitions") or {})

    def schema(self, name):
        return self.schemas[name]

    def resolve(self, s):
        while isinstance(s, dict) and "$ref" in s:
            s = self.schemas[s["$ref"].rsplit("/", 1)[1]]
        return s

    def known(self, value, schema):
        """value without the fields the schema does not know (what serde keeps)."""
        s = self.resolve(schema)
        if isinstance(value, dict) and "properties" in s:
            return {k: self.known(v, s["properties"][k]) for k, v in value.items()
                    if k in s["properties"]}
        if isinstance(value, list) and "items" in s:
            return [self.known(v, s["items"]) for v in value]
        return value

    def validate(self, value, schema, deny_unknown, where=""):
        """None if value fits schema (serde-like), else a serde-style message."""
        s = self.resolve(schema)
        t = s.get("type")
        if "enum" in s and value not in s["enum"]:
            return "unknown variant `%s`, expected one of %s%s" % (
                value, ", ".join("`%s`" % e for e in s["enum"]), where)
        if t == "object" or (t is None and "properties" in s):
            if not isinstance(value, dict):
                return "invalid type: %s, expected struct%s" % (kind(value), where)
            props = s.get("properties", {})
            for k in s.get("required", []):
                if k not in value:
                    return "missing field `%s`%s" % (k, where)
            for k, v in value.items():
                if k not in props:
                    if deny_unknown and "additionalProperties" not in s:
                        return "unknown field `%s`, expected one of %s%s" % (
                            k, ", ".join("`%s`" % p for p in props), where)
                    continue
                e = self.validate(v, props[k], deny_unknown, where)
                if e:
                    return e
            return None
        if t == "array":
            if not isinstance(value, list):
                return "invalid type: %s, expected a sequence%s" % (kind(value), where)
            for v in value:
                e = self.validate(v, s.get("items", {}), deny_unknown, where)
                if e:
                    return e
            return None
        if t == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                return "invalid type: %s, expected an integer%s" % (kind(value), where)
            # minimum is what the Rust types enforce (u32/u64, NonZero*)
            if value < s.get("minimum", 0 if s.get("format") != "int16" else -32768):
                return "invalid value: integer `%d`, expected a nonzero or unsigned integer%s" % (
                    value, where)
            return None
        if t == "boolean" and not isinstance(value, bool):
            return "invalid type: %s, expected a boolean%s" % (kind(value), where)
        if t == "string" and not isinstance(value, str):
            return "invalid type: %s, expected a string%s" % (kind(value), where)
        return None


def kind(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean `%s`" % str(v).lower()
    if isinstance(v, int):
        return "integer `%d`" % v
    if isinstance(v, float):
        return "floating point `%s`" % v
    if isinstance(v, str):
        return 'string "%s"' % v
    if isinstance(v, list):
        return "sequence"
    return "map"


class Reply:
    def __init__(self, status, body=None):
        self.status = status
        self.body = body          # dict/list -> JSON, None -> empty


class Route:
    """One (method, path) the fake serves; `codes` are the statuses it may
    answer (checked against the spec by tests/fakes/conformance)."""

    def __init__(self, method, path, codes, fn, call=None, locked=True):
        self.method, self.path, self.codes, self.fn = method, path, set(codes), fn
        self.locked = locked
        self.call = call or "%s %s" % (method, path)
        rx = re.sub(r"\\\{[a-z_]+\\\}", "([^/]+)", re.escape(path))
        self.rx = re.compile("^" + rx + "$")


class Faults:
    def __init__(self, items):
        self.rules = {}
        self.lock = threading.Lock()
        for item in items:
            for part in filter(None, item.split(",")):
                bits = part.rsplit(":", 2)
                if len(bits) == 3 and bits[2].isdigit():
                    call, mode, count = bits[0], bits[1], int(bits[2])
                else:
                    call, mode = part.rsplit(":", 1)
                    count = -1
                if mode not in ("error", "hang", "slow", "drop"):
                    sys.exit("fake: --fault %s: mode must be error, hang, slow or drop" % part)
                self.rules[call] = [mode, count]

    def load(self, path):
        """Rules added at run time: a file written next to the socket."""
        try:
            with open(path) as f:
                items = f.read().split("\n")
            os.unlink(path)
        except FileNotFoundError:
            return
        more = Faults(items)
        with self.lock:
            self.rules.update(more.rules)

    def take(self, call):
        with self.lock:
            r = self.rules.get(call)
            if not r or r[1] == 0:
                return None
            if r[1] > 0:
                r[1] -= 1
            return r[0]


class Fake:
    """Base of a fake hypervisor: subclasses fill self.routes and error()."""

    generic_codes = set()   # statuses the HTTP layer may answer on any route

    def __init__(self, sock_path, log_path, faults):
        self.sock_path = sock_path
        self.log_path = log_path
        self.faults = Faults(faults)
        self.lock = threading.RLock()
        self.log_lock = threading.Lock()
        self.seq = 0
        self.routes = []
        self.stop_event = threading.Event()

    # -- the guest's console ---------------------------------------------------
    def console_file(self):
        """Where the guest's console goes (a binary file object), or None."""
        return None

    def vm_running(self):
        return False

    def chatter(self, bps):
        """The guest prints `bps` bytes a second on its console while it runs."""
        n = 0
        while not self.stop_event.wait(0.1):
            f = self.console_file()
            if f is None or not self.vm_running():
                continue
            chunk = b""
            while len(chunk) < max(bps // 10, 1):
                n += 1
                chunk += b"[fake guest] console line %08d\n" % n
            try:
                f.write(chunk)
            except (OSError, ValueError):
                pass

    # -- the request log ------------------------------------------------------
    def log(self, **entry):
        with self.log_lock:
            self.seq += 1
            entry = dict(seq=self.seq, t=round(time.monotonic(), 6), **entry)
            with open(self.log_path, "a") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")

    # -- dispatch ---------------------------------------------------------------
    def find(self, method, path):
        same_path = None
        for r in self.routes:
            m = r.rx.match(path)
            if m:
                if r.method == method:
                    return r, m.groups(), True
                same_path = r
        return same_path, (), False

    def handle(self, h, method):
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length > 0 else b""
        path = h.path.split("?", 1)[0]
        route, args, ok = self.find(method, path)
        self.faults.load(self.sock_path + ".fault")
        call = route.call if route and ok else "%s %s" % (method, path)
        mode = self.faults.take(call) if route and ok else None
        entry = dict(method=method, path=path, call=call, body=raw.decode("utf-8", "replace"))
        if mode == "hang":
            self.log(status="hang", **entry)
            self.stop_event.wait()
            return
        if mode == "drop":
            self.log(status="drop", **entry)
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if mode == "slow":
            time.sleep(int(os.environ.get("VMOPS_FAKE_SLOW_MS", "2000")) / 1000.0)
        if mode == "error":
            rep = self.error(route, "injected fault")
        elif not route:
            rep = self.not_found(method, path)
        elif not ok:
            rep = self.bad_method(method, path)
        else:
            rep = self.call_route(route, args, raw)
        undeclared = bool(route and ok and rep.status not in route.codes
                          and rep.status not in self.generic_codes)
        self.log(status=rep.status, undeclared=undeclared, **entry)
        self.send(h, rep)
        if getattr(rep, "after", None):
            rep.after()

    def call_route(self, route, args, raw):
        body = None
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError as e:
                return self.bad_body(route, "expected value: %s" % e)
        if not route.locked:
            return route.fn(body, *args)
        with self.lock:
            return route.fn(body, *args)

    def send(self, h, rep):
        data = b""
        if rep.body is not None:
            data = json.dumps(rep.body).encode()
        h.send_response(rep.status)
        if data:
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if data:
            h.wfile.write(data)
        h.wfile.flush()

    # -- serving -----------------------------------------------------------------
    def serve(self):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def address_string(self):
                return "unix"

            def do_GET(self):
                fake.handle(self, "GET")

            def do_PUT(self):
                fake.handle(self, "PUT")

            def do_PATCH(self):
                fake.handle(self, "PATCH")

            def do_POST(self):
                fake.handle(self, "POST")

            def do_DELETE(self):
                fake.handle(self, "DELETE")

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        try:
            os.unlink(self.sock_path)
        except FileNotFoundError:
            pass
        srv = Server(self.sock_path, Handler)
        self.server = srv

        def on_term(signum, frame):
            self.exit(0)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        self.log(event="started", pid=os.getpid())
        bps = int(os.environ.get("VMOPS_FAKE_CONSOLE_BPS", "0"))
        if bps > 0:
            threading.Thread(target=self.chatter, args=(bps,), daemon=True).start()
        srv.serve_forever(poll_interval=0.05)

    def exit(self, code):
        self.stop_event.set()
        try:
            os.unlink(self.sock_path)
        except OSError:
            pass
        os._exit(code)

    def exit_soon(self, code, delay=0.05):
        t = threading.Timer(delay, self.exit, (code,))
        t.daemon = True
        t.start()


def memory_fill(path, size):
    """A sparse guest memory file with recognisable contents."""
    with open(path, "wb") as f:
        f.truncate(size)
        seed = os.urandom(65536)
        for off in range(0, size, max(size // 8, 65536)):
            f.seek(off)
            f.write(seed[: min(65536, size - off)])


def sha256_file(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def sparse_copy(src, dst, size=None):
    """Copy skipping all-zero 64 KiB blocks (holes stay holes)."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        total = os.fstat(fi.fileno()).st_size if size is None else size
        fo.truncate(total)
        off = 0
        while off < total:
            blk = fi.read(65536)
            if not blk:
                break
            if blk.count(0) != len(blk):
                fo.seek(off)
                fo.write(blk)
            off += len(blk)
