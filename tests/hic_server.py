"""A local image server on 127.0.0.1 for the Oxford HIC preparation tests and benchmark.

Routes are registered in ``server.routes``: path -> Route. Every request is counted. A route can
answer with any status and extra headers (redirects), sleep before answering (timeouts), stream its
body in two halves with a pause between them (so a client can be killed mid-download), drip-feed its
body (or its headers too) one byte at a time, or fail the first N requests (retries). A global
``latency`` adds a delay to every request (the benchmark's 50 ms). ``host`` may be another loopback
address (127.0.0.2) for a second server.
"""

from __future__ import annotations

import io
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "image/jpeg"
    delay: float = 0.0  # seconds before the headers
    fail_first: int = 0  # answer 503 to the first N requests
    fail_status: int = 503
    headers: dict = field(default_factory=dict)  # extra response headers (e.g. Location for a redirect)
    drip: float = 0.0  # >0: send the body one byte at a time, this many seconds apart
    drip_headers: bool = False  # with drip: the status line and headers too


class _Handler(BaseHTTPRequestHandler):
    server_version = "hic-test-server/1.0"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        srv: ImageServer = self.server.owner
        path = self.path.split("?", 1)[0]
        with srv.lock:
            srv.requests[path] += 1
            srv.user_agents.add(self.headers.get("User-Agent", ""))
            n = srv.requests[path]
        route = srv.routes.get(path)
        pause = srv.latency + (route.delay if route else 0.0)
        if pause and srv.stopping.wait(pause):
            return
        try:
            if route is None:
                self._send(404, "text/plain", b"not found")
            elif n <= route.fail_first:
                self._send(route.fail_status, "text/plain", b"try again later")
            elif route.drip:
                self._drip(srv, route)
            elif srv.slow_body and route.status == 200 and len(route.body) > 1:
                half = len(route.body) // 2
                self.send_response(200)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body[:half])
                self.wfile.flush()
                if srv.stopping.wait(srv.slow_body):
                    return
                self.wfile.write(route.body[half:])
            else:
                self._send(route.status, route.content_type, route.body, route.headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (the kill test does that on purpose)

    def _send(self, status, content_type, body, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in dict(headers).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, srv, route):
        head = (f"HTTP/1.1 {route.status} OK\r\nContent-Type: {route.content_type}\r\n"
                f"Content-Length: {len(route.body)}\r\nX-Pad: {'p' * 200}\r\n\r\n").encode()
        if not route.drip_headers:
            self.wfile.write(head)
            head = b""
        for i in range(len(head) + len(route.body)):
            self.wfile.write((head + route.body)[i:i + 1])
            self.wfile.flush()
            if srv.stopping.wait(route.drip):
                return


class ImageServer:
    def __init__(self, latency: float = 0.0, host: str = "127.0.0.1"):
        self.routes: dict[str, Route] = {}
        self.requests: Counter = Counter()
        self.user_agents: set[str] = set()
        self.lock = threading.Lock()
        self.latency = latency
        self.slow_body = 0.0  # >0: pause this long in the middle of every image body
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer((host, 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 128
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def total_requests(self) -> int:
        with self.lock:
            return sum(self.requests.values())

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        return False


def make_image_bytes(size=(64, 48), mode="RGB", fmt="JPEG", color=(200, 30, 30), **save) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new(mode, size, color)
    draw = ImageDraw.Draw(img)
    w, h = size
    if mode in ("RGB", "RGBA"):
        draw.rectangle([w // 4, h // 4, w // 2, h // 2], fill=(20, 180, 40) + ((255,) if mode == "RGBA" else ()))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _serve_forever_cli(argv=None) -> None:
    """``python tests/hic_server.py --images N --latency S``: serve N distinct 320x240 JPEGs at
    /img/<i>.jpg from a separate process (so a benchmark's client does not share its GIL), print the
    base URL on stdout, stop when stdin closes."""
    import argparse
    import random
    import sys

    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, required=True)
    p.add_argument("--latency", type=float, default=0.0)
    args = p.parse_args(argv)
    rng = random.Random(0)
    with ImageServer(latency=args.latency) as srv:
        for i in range(args.images):
            color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            srv.routes[f"/img/{i}.jpg"] = Route(make_image_bytes((320, 240), color=color))
        print(srv.base_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    _serve_forever_cli()
