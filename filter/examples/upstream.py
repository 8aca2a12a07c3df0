#!/usr/bin/env python3
"""Tiny HTTP/1.1 upstream for checking the filter by hand (127.0.0.1, threaded).

GET /delay/<ms> sleeps <ms> then answers 200; GET /status/<code> answers <code>; anything
else answers 200 "ok". Prints `listening <port>` first (use --port 0 for a free port).
"""
import argparse
import http.server
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server API
        code, parts = 200, self.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "delay":
            time.sleep(int(parts[1]) / 1000)
        elif len(parts) == 2 and parts[0] == "status":
            code = int(parts[1])
        body = b"ok\n"
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    print(f"listening {srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
