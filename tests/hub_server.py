"""A loopback HTTP server that speaks enough of the Hugging Face Hub API for push and pull tests.

It implements repository creation, YAML validation, pre-upload, commits (NDJSON, base64 files),
model info and file resolution, keeping the repositories in memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubState:
    """Repositories in memory: ``{repo_id: {"sha": str, "files": {path: bytes}}}``; ``fail`` forces 500s."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.fail = False
        self.requests: list[str] = []


def _handler(state: HubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, payload: bytes = b"", content_type: str = "application/json",
                  headers: dict | None = None, head: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(payload)

        def _json(self, status: int, value) -> None:
            self._send(status, json.dumps(value).encode())

        def _refuse(self) -> bool:
            state.requests.append(f"{self.command} {self.path}")
            if state.fail:
                self._json(500, {"error": "Internal Server Error (test)"})
                return True
            return False

        def do_POST(self) -> None:
            body = self._body()
            if self._refuse():
                return
            path = self.path.split("?")[0]
            if path == "/api/repos/create":
                request = json.loads(body or b"{}")
                repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
                state.repos.setdefault(repo_id, {"sha": "0" * 40, "files": {}})
                return self._json(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":
                return self._json(200, {})
            match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path)
            if match:
                files = json.loads(body)["files"]
                return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                  for f in files]})
            match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path)
            if match:
                repo = state.repos.setdefault(match.group(1), {"sha": "0" * 40, "files": {}})
                for line in body.decode().splitlines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if item["key"] == "file":
                        repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] == "deletedFile":
                        repo["files"].pop(item["value"]["path"], None)
                repo["sha"] = hashlib.sha1(repr(sorted(repo["files"].items())).encode()).hexdigest()
                url = f"http://{self.headers['Host']}/{match.group(1)}/commit/{repo['sha']}"
                return self._json(200, {"commitUrl": url, "commitOid": repo["sha"], "success": True})
            self._json(404, {"error": f"not implemented: POST {path}"})

        def _get(self, head: bool) -> None:
            if self._refuse():
                return
            path = self.path.split("?")[0]
            match = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
            if match:
                repo = state.repos.get(match.group(1))
                if repo is None:
                    return self._json(404, {"error": "Repository not found"})
                return self._json(200, {"id": match.group(1), "modelId": match.group(1), "sha": repo["sha"],
                                        "siblings": [{"rfilename": name} for name in sorted(repo["files"])],
                                        "private": False, "tags": []})
            match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if match:
                repo = state.repos.get(match.group(1))
                content = None if repo is None else repo["files"].get(match.group(3))
                if content is None:
                    return self._send(404, b"Entry not found", "text/plain",
                                      {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo["sha"] if repo else ""},
                                      head=head)
                etag = hashlib.sha1(content).hexdigest()
                return self._send(200, content, "application/octet-stream",
                                  {"X-Repo-Commit": repo["sha"], "ETag": f'"{etag}"'}, head=head)
            self._json(404, {"error": f"not implemented: GET {path}"})

        def do_GET(self) -> None:
            self._get(head=False)

        def do_HEAD(self) -> None:
            self._get(head=True)

    return Handler


class LoopbackHub:
    """Context manager running the server on 127.0.0.1 in a thread; ``.endpoint`` is its URL."""

    def __init__(self) -> None:
        self.state = HubState()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
