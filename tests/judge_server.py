"""An OpenAI-compatible chat-completions server on a free loopback port, answering as a real local model judges
(pipeline.judges.ModelJudge on the loaded model): what the endpoint judge's tests talk to over real HTTP.

Modes: "ok"; "flaky" (the first `failures` requests get a 503, as a server restarting would); "garbage" (prompts
whose digest is even get an answer that names no label).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JudgeServer:
    def __init__(self, judge: Any, key: str, mode: str = "ok", failures: int = 0):
        self.judge, self.key, self.mode = judge, key, mode
        self.failures_left = failures
        self.requests = 0  # answered requests (not the failed ones)
        self.failed = 0
        self.received = 0  # every request that reached the server, refused ones included
        self.lock = threading.Lock()  # one forward pass at a time on the shared model
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.received += 1
                if self.headers.get("Authorization") != f"Bearer {owner.key}":
                    return self._send(401, {"error": {"message": "bad key", "type": "auth"}})
                with owner.lock:
                    if owner.failures_left > 0:
                        owner.failures_left -= 1
                        owner.failed += 1
                        return self._send(503, {"error": {"message": "warming up", "type": "unavailable"}})
                    content = body["messages"][-1]["content"]
                    p_first = owner.judge.first_slot_probabilities([content])[0]
                    owner.requests += 1
                garbage = owner.mode == "garbage" and hashlib.sha256(content.encode()).digest()[0] % 2 == 0
                answer = "I cannot decide between them." if garbage else ("A" if p_first >= 0.5 else "B")
                top = [
                    {"token": "A", "logprob": math.log(max(p_first, 1e-12)), "bytes": None},
                    {"token": "B", "logprob": math.log(max(1 - p_first, 1e-12)), "bytes": None},
                ]
                first = {
                    "token": answer.split()[0],
                    "logprob": -0.1,
                    "bytes": None,
                    "top_logprobs": [] if garbage else top,
                }
                self._send(
                    200,
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": answer},
                                "logprobs": {"content": [first]},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    },
                )

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
