"""Fetch many web pages at once on the thread backend, with a timeout and retries.

    python examples/scrape_threads.py URL [URL ...]
    python examples/scrape_threads.py --small      # against a local test server it starts

Downloading is waiting, not computing, so threads are the right workers: they start in
microseconds, share memory, and 16 of them keep 16 requests in flight on any number of cores.
``on_error="return"`` keeps one bad URL from stopping the others.
"""

from __future__ import annotations

import argparse
import http.server
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from parallelize import pmap

TITLE = re.compile(rb"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)
REQUEST_TIMEOUT = 10.0  # seconds for one HTTP request; the map's own timeout is a backstop


def page_title(url: str) -> str:
    """The ``<title>`` of the page at ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT) as response:
            match = TITLE.search(response.read())
    except urllib.error.HTTPError as error:
        error.close()  # an HTTP error holds the connection open until closed
        raise
    if match is None:
        raise ValueError(f"{url} has no <title>")
    return match.group(1).decode().strip()


def titles(urls: list[str], workers: int = 16) -> list[str | BaseException]:
    """Each URL's title, or the exception that fetching it raised."""
    return pmap(
        page_title,
        urls,
        backend="thread",
        workers=workers,
        timeout=30,
        retries=1,
        on_error="return",
        progress={"desc": "fetching", "unit": "page"},
    )


class _SlowPages(http.server.BaseHTTPRequestHandler):
    """Pages ``/N`` titled "Page N", each after a short random delay; ``/missing`` is a 404."""

    def do_GET(self) -> None:
        time.sleep(random.uniform(0.01, 0.05))
        if self.path == "/missing":
            self.send_error(404)
            return
        body = f"<html><title>Page {self.path[1:]}</title><body>hello</body></html>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep the output clean
        pass


@contextmanager
def local_server() -> Iterator[str]:
    """A throw-away HTTP server on localhost; its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowPages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="*", help="pages to fetch")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--small", action="store_true", help="fetch from a local test server")
    args = parser.parse_args(argv)
    if args.small:
        with local_server() as base:
            urls = [f"{base}/{n}" for n in range(40)] + [f"{base}/missing"]
            started = time.perf_counter()
            results = titles(urls, args.workers)
            seconds = time.perf_counter() - started
        assert results[:40] == [f"Page {n}" for n in range(40)], results
        assert isinstance(results[40], OSError)  # the 404, as a value, not a crash
        print(f"fetched {len(urls)} pages in {seconds:.2f} s; 1 failed as expected: {results[40]}")
        return 0
    if not args.urls:
        parser.error("give URLs to fetch, or --small")
    failed = 0
    for url, result in zip(args.urls, titles(args.urls, args.workers), strict=True):
        if isinstance(result, BaseException):
            failed += 1
            print(f"{url}: FAILED {result!r}")
        else:
            print(f"{url}: {result}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
