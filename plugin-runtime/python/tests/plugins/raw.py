"""A plugin written against PROTOCOL.md with plugd.protocol only (no Plugin class): it answers
`GET /code/{n}` with error code n, `GET /bare` with a response that omits headers and body, and
`GET /nil` with a response whose headers and body are nil."""

import os
import socket

from plugd import protocol

sock = socket.socket(socket.AF_UNIX)
sock.connect(os.environ["PLUGD_SOCKET"])
hello = {
    "protocol": {"major": 1, "minor": 0},
    "name": os.environ["PLUGD_PLUGIN_NAME"],
    "version": "0.0.1",
    "epoch": int(os.environ["PLUGD_EPOCH"]),
    "token": os.environ["PLUGD_TOKEN"],
    "max_frame": protocol.DEFAULT_MAX_FRAME,
    "routes": [
        {"method": "GET", "path": "/code/{n}", "permission": None},
        {"method": "GET", "path": "/bare", "permission": None},
        {"method": "GET", "path": "/nil", "permission": None},
    ],
    "hooks": [],
    "services": [],
    "permissions": [],
}
sock.sendall(protocol.encode_request(0, "handshake", hello))
decoder = protocol.FrameDecoder()
while True:
    data = sock.recv(65536)
    if not data:
        break
    for body in decoder.feed(data):
        message = protocol.decode_message(body)
        if isinstance(message, protocol.Request):
            if message.method == "http" and message.params["route"] == "/bare":
                sock.sendall(protocol.encode_response(message.id, {"status": 200}))
            elif message.method == "http" and message.params["route"] == "/nil":
                answer = {"status": 201, "headers": None, "body": None}
                sock.sendall(protocol.encode_response(message.id, answer))
            elif message.method == "http":
                code = int(message.params["params"]["n"])
                error = protocol.ErrorObject(code, f"error code {code} on purpose")
                sock.sendall(protocol.encode_error(message.id, error))
            elif message.method == "shutdown":
                sock.sendall(protocol.encode_response(message.id, {}))
                raise SystemExit(0)
            else:
                sock.sendall(protocol.encode_response(message.id, {}))
