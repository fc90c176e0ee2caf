"""A loopback HTTP server for download tests (127.0.0.1 only), and a small checkpoint."""

from __future__ import annotations

import io
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from timm.models.vision_transformer import VisionTransformer


def checkpoint_bytes(seed: int = 0) -> bytes:
    """An MAE pre-training file of a 2-block ViT-T (a few MB)."""
    torch.manual_seed(seed)
    state = VisionTransformer(embed_dim=192, depth=2, num_heads=3, num_classes=0).state_dict()
    buf = io.BytesIO()
    torch.save({"model": state}, buf)
    return buf.getvalue()


class RangeServer:
    """Serves ``files`` with HTTP Range support; ``break_after[path] = n`` makes the next
    response to ``path`` stop after ``n`` body bytes and close the connection."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.break_after: dict[str, int] = {}
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not server.ignore_range:
                    start = int(m.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.break_after.pop(self.path, None)
                if cut is None:
                    self.wfile.write(body[start:])
                    return
                self.wfile.write(body[start:start + cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)  # the connection breaks

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"
