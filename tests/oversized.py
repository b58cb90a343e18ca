"""Clients that send a whole oversized body before reading the answer."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

TEN_MB = 10 * 1024 * 1024


def urllib_post(url: str, size: int = TEN_MB, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, Any]]:
    """POST `size` bytes with Python's urllib, which writes the whole body before reading."""
    request = urllib.request.Request(url, data=b" " * size, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as answer:
        return answer.code, json.loads(answer.read())


def lying_post(url: str, declared: int, sent: int, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, Any]]:
    """POST with a Content-Length of `declared` bytes but only `sent` bytes of body, then read."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    raw = socket.create_connection((host, port), timeout=60)
    conn = context.wrap_socket(raw, server_hostname=host) if context else raw
    with conn:
        head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        )
        conn.sendall(head.encode() + b" " * sent)
        received = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
            if b"\r\n\r\n" in received:
                header, _, body = received.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in header.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                if len(body) >= length:
                    break
    header, _, body = received.partition(b"\r\n\r\n")
    return int(header.split(b" ")[1]), json.loads(body)
