#!/usr/bin/env python3
"""The chat example's backend: the integration of every Route of the `chat` WebSocket API.

  POST /connect     ($connect)     remembers the connection and its user (x-user-id, set by the
                                   JWT authorizer); refuses connections without a user (403)
  POST /disconnect  ($disconnect)  forgets the connection
  POST /message     (sendMessage)  fans the message out to every connection through the
                                   gateway's @connections API (AWS SDK client, SigV4-signed)
  POST /default     ($default)     answers the sender with a hint (sent back as a frame)
  GET  /stats                      connections and $disconnect counts (for tests)

Configuration (environment): PORT (default 8081), CONNECTIONS_URL (a gateway's @connections
listener, e.g. http://127.0.0.1:9902), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (an access key
the API's connectionsApi.credentialSelector selects), AWS_REGION (any; default us-east-1).
Needs botocore (`pip install botocore`).
"""
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import botocore.session

LOCK = threading.Lock()
CONNECTIONS = {}  # connection id -> user
DISCONNECTS = {}  # connection id -> how many times $disconnect was invoked


def management_client():
    session = botocore.session.get_session()
    return session.create_client(
        "apigatewaymanagementapi",
        endpoint_url=os.environ.get("CONNECTIONS_URL", "http://127.0.0.1:9902"),
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    )


CLIENT = management_client()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body=b""):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                stats = {"connections": CONNECTIONS, "disconnects": DISCONNECTS}
            self.reply(200, json.dumps(stats).encode())
        else:
            self.reply(404)

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        connection = self.headers.get("x-tollgate-connection-id", "")
        if self.path == "/connect":
            user = self.headers.get("x-user-id")
            if not user:
                self.reply(403, b'{"message":"who are you?"}')
                return
            with LOCK:
                CONNECTIONS[connection] = user
            self.reply(200)
        elif self.path == "/disconnect":
            with LOCK:
                CONNECTIONS.pop(connection, None)
                DISCONNECTS[connection] = DISCONNECTS.get(connection, 0) + 1
            self.reply(200)
        elif self.path == "/message":
            text = json.loads(body or b"{}").get("text", "")
            with LOCK:
                sender = CONNECTIONS.get(connection, "?")
                targets = list(CONNECTIONS)
            frame = json.dumps({"from": sender, "text": text}).encode()
            for target in targets:
                try:
                    CLIENT.post_to_connection(ConnectionId=target, Data=frame)
                except CLIENT.exceptions.GoneException:
                    with LOCK:
                        CONNECTIONS.pop(target, None)
            self.reply(200)
        elif self.path == "/default":
            self.reply(200, b'{"message":"unknown action: use {\\"action\\":\\"sendMessage\\",\\"text\\":...}"}')
        else:
            self.reply(404)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8081"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"chat backend on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
