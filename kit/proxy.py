"""A threaded TCP forwarder on loopback that parses the HTTP/1.x stream in both directions (counts
requests, pairs responses, sees in-flight long polls) and can blackhole or reset traffic: each
contender's way to its dev agent in the bench and the chaos suite. Standard library only.
"""
from __future__ import annotations

import socket
import threading
import urllib.parse

from kit.agent import LOOPBACK
from kit.procs import mono



class HTTPStream:
    """Incremental HTTP/1.x message framer for one direction of a connection.

    Calls on_message(start_line) when a message's head is complete and on_end() when its body
    is complete. Handles Content-Length, chunked bodies and (responses) read-until-close.
    """

    def __init__(self, is_request: bool, on_head, on_end):
        self.is_request = is_request
        self.on_head = on_head
        self.on_end = on_end
        self.buf = b""
        self.state = "head"
        self.remaining = 0
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self.buf += data
        try:
            self._run()
        except Exception:  # noqa: BLE001 - never break forwarding because of parsing
            self.broken = True

    def _run(self) -> None:
        while True:
            if self.state == "head":
                i = self.buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(self.buf) > 1 << 20:
                        self.broken = True
                    return
                head = self.buf[:i].decode("latin-1")
                self.buf = self.buf[i + 4:]
                lines = head.split("\r\n")
                start = lines[0]
                hdrs = {}
                for ln in lines[1:]:
                    if ":" in ln:
                        k, v = ln.split(":", 1)
                        hdrs[k.strip().lower()] = v.strip()
                self.on_head(start, hdrs)
                if not self.is_request:
                    code = int(start.split(" ")[1])
                    if 100 <= code < 200:
                        continue
                    if code in (204, 304):
                        self.on_end()
                        continue
                if "chunked" in hdrs.get("transfer-encoding", "").lower():
                    self.state = "chunk-size"
                elif "content-length" in hdrs:
                    self.remaining = int(hdrs["content-length"])
                    self.state = "body"
                elif self.is_request:
                    self.remaining = 0
                    self.state = "body"
                else:
                    self.state = "until-close"
            elif self.state == "body":
                n = min(self.remaining, len(self.buf))
                self.buf = self.buf[n:]
                self.remaining -= n
                if self.remaining:
                    return
                self.state = "head"
                self.on_end()
            elif self.state == "chunk-size":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return
                size = int(self.buf[:i].split(b";")[0], 16)
                self.buf = self.buf[i + 2:]
                if size == 0:
                    self.state = "trailer"
                else:
                    self.remaining = size + 2
                    self.state = "chunk-data"
            elif self.state == "chunk-data":
                n = min(self.remaining, len(self.buf))
                self.buf = self.buf[n:]
                self.remaining -= n
                if self.remaining:
                    return
                self.state = "chunk-size"
            elif self.state == "trailer":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return
                line = self.buf[:i]
                self.buf = self.buf[i + 2:]
                if line == b"":
                    self.state = "head"
                    self.on_end()
            elif self.state == "until-close":
                self.buf = b""
                return


class Exchange:
    __slots__ = ("conn", "t_req", "method", "target", "t_resp", "status", "t_done")

    def __init__(self, conn, t_req, method, target):
        self.conn, self.t_req, self.method, self.target = conn, t_req, method, target
        self.t_resp = self.status = self.t_done = None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> dict:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.target).query)

    def is_blocking(self) -> bool:
        q = self.query
        return self.method == "GET" and "index" in q and q["index"][0] not in ("", "0")

    def as_dict(self, t0=0) -> dict:
        def rel(t):
            return None if t is None else round((t - t0) / 1e6, 3)
        return {"conn": self.conn, "t_req_ms": rel(self.t_req), "method": self.method,
                "target": self.target, "status": self.status, "t_resp_ms": rel(self.t_resp)}


class Proxy:
    """Loopback TCP forwarder with HTTP accounting and fault modes.

    mode "pass":      forward bytes both ways;
    mode "blackhole": stop moving bytes in both directions (already-read data is held back, new
                      connections are accepted but not forwarded) until heal() - like packets being
                      dropped on a partitioned link: the client sees a hung request, not an error;
    mode "reset":     close every connection with RST (SO_LINGER 0) and reset new ones until heal().
    """

    def __init__(self, target_port: int, name: str = "proxy", listen_port: int = 0):
        self.target_port = target_port
        self.name = name
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind((LOOPBACK, listen_port))
        self.ls.listen(128)
        self.port = self.ls.getsockname()[1]
        self.mode = "pass"
        self.cv = threading.Condition()
        self.exchanges: list[Exchange] = []
        self.conns: dict[int, tuple[socket.socket, socket.socket | None]] = {}
        self.next_conn = 0
        self.closed = False
        self.parse_errors = 0
        self.thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    # -- control
    def blackhole(self) -> None:
        with self.cv:
            self.mode = "blackhole"
            self.cv.notify_all()

    def reset(self) -> None:
        with self.cv:
            self.mode = "reset"
            conns = list(self.conns.values())
            self.cv.notify_all()
        for c, u in conns:
            _rst(c)
            if u is not None:
                _rst(u)

    def heal(self) -> None:
        with self.cv:
            self.mode = "pass"
            self.cv.notify_all()

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.mode = "reset"
            conns = list(self.conns.values())
            self.cv.notify_all()
        try:
            self.ls.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ls.close()
        for c, u in conns:
            _rst(c)
            if u is not None:
                _rst(u)

    # -- accounting
    def snapshot(self) -> list[Exchange]:
        with self.cv:
            return list(self.exchanges)

    def in_flight(self) -> list[Exchange]:
        with self.cv:
            return [e for e in self.exchanges if e.status is None]

    def waiting_in_long_poll(self) -> bool:
        """True when the client has a blocking query (index > 0) outstanding and nothing else."""
        fl = self.in_flight()
        return bool(fl) and all(e.is_blocking() for e in fl)

    # -- internals
    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            with self.cv:
                if self.mode == "reset" or self.closed:
                    _rst(c)
                    continue
                cid = self.next_conn
                self.next_conn += 1
                self.conns[cid] = (c, None)
            threading.Thread(target=self._serve, args=(cid, c), name=f"{self.name}-{cid}",
                             daemon=True).start()

    def _gate(self) -> bool:
        """Block while blackholed. Returns False if the connection must be dropped."""
        with self.cv:
            while self.mode == "blackhole" and not self.closed:
                self.cv.wait(0.5)
            return self.mode == "pass" and not self.closed

    def _serve(self, cid: int, c: socket.socket) -> None:
        u = None
        try:
            if not self._gate():
                return
            try:
                u = socket.create_connection((LOOPBACK, self.target_port), timeout=5)
                u.settimeout(None)
            except OSError:
                return
            with self.cv:
                if self.mode == "reset" or self.closed:
                    return
                self.conns[cid] = (c, u)
            pending: list[Exchange] = []

            def req_head(start, _h):
                parts = start.split(" ")
                e = Exchange(cid, mono(), parts[0], parts[1] if len(parts) > 1 else "")
                with self.cv:
                    self.exchanges.append(e)
                    pending.append(e)

            def resp_head(start, _h):
                code = int(start.split(" ")[1])
                if code < 200:
                    return
                with self.cv:
                    if pending:
                        pending[0].status = code
                        pending[0].t_resp = mono()

            def resp_end():
                with self.cv:
                    if pending:
                        e = pending.pop(0)
                        e.t_done = mono()
                        if e.status is None:
                            e.status = 0

            up = HTTPStream(True, req_head, lambda: None)
            down = HTTPStream(False, resp_head, resp_end)
            t = threading.Thread(target=self._pump, args=(u, c, down), daemon=True)
            t.start()
            self._pump(c, u, up)
            t.join(timeout=1)
            with self.cv:
                for e in pending:  # connection closed with requests unanswered
                    if e.status is None:
                        e.status = -1
                        e.t_resp = mono()
        finally:
            with self.cv:
                self.conns.pop(cid, None)
            for s in (c, u):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    def _pump(self, src: socket.socket, dst: socket.socket, parser: HTTPStream) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                if not self._gate():
                    _rst(src)
                    _rst(dst)
                    return
                parser.feed(data)
                if parser.broken:
                    self.parse_errors += 1
                dst.sendall(data)
        except OSError:
            _rst(src)
            _rst(dst)


def _rst(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
