"""One HTTP(S) download with hard limits.

* http/https only; a URL that does not parse, has an impossible port, no host, or whitespace or
  control characters in it is ``bad_url`` (never requested, never retried).
* A deadline for the whole response, headers included: every socket read waits at most the time left
  (and at most ``timeout``), so a server that drip-feeds bytes cannot hold a worker past it.
* A byte cap, a global request rate, a clear User-Agent.
* Redirects: never to another scheme; and never from a public host to a loopback, private, link-local
  or otherwise non-global address (``redirect_refused``, checked on the address actually connected
  to, before any request is sent there) unless ``allow_private_redirects``. URLs listed in the CSV are
  fetched whatever their address: that is the user's own list.
* :meth:`Fetcher.abort` (Ctrl-C) ends every download in flight at once.
"""

from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

USER_AGENT = (
    "minigpt4-hic-prepare/0.1 (research dataset preparation for Oxford HIC; "
    "see dataset/README_HIC.md in the minigpt4-hic project)"
)
RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}  # transient HTTP statuses worth retrying
_NOT_IN_URL = re.compile(r"[\x00-\x20\x7f]")


class FetchError(Exception):
    def __init__(self, reason: str, retry: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


def url_problem(url: str) -> str | None:
    """``None`` for a URL worth requesting, else its failure reason (``unsupported_url``, ``bad_url``)."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            return "unsupported_url"
        if _NOT_IN_URL.search(url) or not parts.hostname:
            return "bad_url"
        parts.port  # noqa: B018 - raises ValueError for a port out of 0..65535 or not a number
    except ValueError:
        return "bad_url"
    return None


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global


class RateLimiter:
    """Global requests-per-second cap shared by all worker threads (None: unlimited)."""

    def __init__(self, per_second: float | None, stop: threading.Event):
        self.interval = 1.0 / per_second if per_second else 0.0
        self.lock = threading.Lock()
        self.next_slot = time.monotonic()
        self.stop = stop

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_slot)
            self.next_slot = slot + self.interval
        if slot > now:
            self.stop.wait(slot - now)


class _Watch:
    """One fetch (with its redirects): deadline, per-operation timeout, the origin's kind, the stop."""

    def __init__(self, fetcher: "Fetcher"):
        self.fetcher = fetcher
        self.deadline = time.monotonic() + fetcher.timeout * 4
        self.redirects = 0
        self.origin_public = False

    def time_left(self) -> float:
        if self.fetcher.stop.is_set():
            raise FetchError("interrupted")
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("the response took longer than 4x --timeout")
        return min(self.fetcher.timeout, left)

    def check_peer(self, address: str) -> None:
        public = self.fetcher.is_public(address)
        if self.redirects == 0:
            self.origin_public = public
        elif self.origin_public and not public and not self.fetcher.allow_private_redirects:
            raise FetchError("redirect_refused")


class _DeadlineSocket:
    """A connected socket whose reader sets the socket timeout to the time left before every read."""

    def __init__(self, sock, watch: _Watch):
        self.sock, self.watch = sock, watch
        self.readers = 0
        self.closed = False
        watch.fetcher.track(self, True)

    def makefile(self, mode="rb", *args, **kwargs):
        self.readers += 1
        return io.BufferedReader(_Reader(self))

    def close(self):  # http.client and urllib close it while the response still reads: defer
        self.closed = True
        if self.readers == 0:
            self.watch.fetcher.track(self, False)
            self.sock.close()

    def __getattr__(self, name):
        return getattr(self.sock, name)


class _Reader(io.RawIOBase):
    def __init__(self, owner: _DeadlineSocket):
        self.owner = owner

    def readable(self):
        return True

    def readinto(self, buffer):
        self.owner.sock.settimeout(self.owner.watch.time_left())
        return self.owner.sock.recv_into(buffer)

    def close(self):
        if not self.closed:
            self.owner.readers -= 1
            if self.owner.closed:
                self.owner.close()
        super().close()


class _Watched:
    def __init__(self, *args, watch: _Watch, **kwargs):
        super().__init__(*args, **kwargs)
        self.watch = watch

    def connect(self):
        self.timeout = self.watch.time_left()
        super().connect()
        try:
            self.watch.check_peer(self.sock.getpeername()[0])
        except BaseException:
            self.sock.close()
            raise
        self.sock = _DeadlineSocket(self.sock, self.watch)


class _HTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def do_open(self, http_class, req, **kwargs):
        return super().do_open(functools.partial(_HTTPConnection, watch=req.watch), req, **kwargs)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def do_open(self, http_class, req, **kwargs):
        return super().do_open(functools.partial(_HTTPSConnection, watch=req.watch), req, **kwargs)


class _Redirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, "redirect to a non-http(s) URL", headers, fp)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.watch = req.watch
            new.watch.redirects += 1
        return new


class Fetcher:
    """``fetch(url) -> bytes`` or a :class:`FetchError` with the failure reason (shared by threads)."""

    def __init__(self, timeout: float, max_bytes: int, max_per_second: float | None = None,
                 allow_private_redirects: bool = False, is_public=is_public_address):
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.allow_private_redirects = allow_private_redirects
        self.is_public = is_public
        self.stop = threading.Event()
        self.rate = RateLimiter(max_per_second, self.stop)
        self.opener = urllib.request.build_opener(_Redirects(), _HTTPHandler(), _HTTPSHandler())
        self.lock = threading.Lock()
        self.active: set[_DeadlineSocket] = set()

    def track(self, sock: _DeadlineSocket, add: bool) -> None:
        with self.lock:
            (self.active.add if add else self.active.discard)(sock)

    def abort(self) -> None:
        """Stop: no new request, and every connection in flight is shut down now."""
        self.stop.set()
        with self.lock:
            active = list(self.active)
        for sock in active:
            try:
                sock.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def fetch(self, url: str) -> bytes:
        self.rate.wait()
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
        request.watch = _Watch(self)
        try:
            request.watch.time_left()  # stopped already?
            with self.opener.open(request, timeout=self.timeout) as resp:
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and (len(length) > 18 or int(length) > self.max_bytes):
                    raise FetchError("too_many_bytes")
                chunks, size = [], 0
                while True:
                    chunk = resp.read(1 << 16)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise FetchError("too_many_bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except FetchError:
            raise
        except urllib.error.HTTPError as exc:
            raise FetchError(f"http_{exc.code}", retry=exc.code in RETRY_HTTP) from None
        except (socket.timeout, TimeoutError):
            raise FetchError("timeout", retry=True) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (socket.timeout, TimeoutError)):
                raise FetchError("timeout", retry=True) from None
            if isinstance(exc.reason, socket.gaierror):
                raise FetchError("dns_error", retry=False) from None
            raise FetchError("connection_error", retry=True) from None
        except http.client.InvalidURL:
            raise FetchError("bad_url") from None
        except (http.client.HTTPException, ConnectionError, OSError):  # IncompleteRead included
            raise FetchError("connection_error", retry=True) from None
        except ValueError:
            raise FetchError("bad_url") from None
