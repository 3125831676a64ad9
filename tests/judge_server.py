"""A scripted OpenAI-compatible judge on 127.0.0.1 for tests: real HTTP, real client.

The judge prefers the answer containing "good" (a tie when both or neither do). Modes:
``rule`` (that), ``always_first`` (pure position bias), ``garbage`` (not a verdict), and
HTTP 200 replies that are not chat completions: ``bad_json``, ``no_choices``,
``empty_choices``, ``text_plain``, ``null_content``.
``failures`` is a list of HTTP status codes returned, one per call, before any answer;
``delay`` slows every answer (for timeouts). ``calls`` counts requests.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response

_ANSWERS = re.compile(r"Answer A: (.*)\n\nAnswer B: (.*)\n\n", re.DOTALL)


class ScriptedJudge:
    def __init__(self):
        self.calls = 0
        self.failures: list[int] = []
        self.mode = "rule"
        self.delay = 0.0
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._chat)

    def verdict(self, text: str) -> str:
        if self.mode == "garbage":
            return "Both answers have merit."
        if self.mode == "always_first":
            return "A"
        first, second = _ANSWERS.search(text).groups()
        a, b = "good" in first, "good" in second
        return "TIE" if a == b else ("A" if a else "B")

    async def _chat(self, body: dict):
        self.calls += 1
        if self.failures:
            code = self.failures.pop(0)
            return JSONResponse({"error": {"message": f"injected {code}"}}, status_code=code,
                                headers={"retry-after-ms": "10"})
        if self.delay:
            await asyncio.sleep(self.delay)
        malformed = {
            "bad_json": lambda: Response('{"choices": [', media_type="application/json"),
            "no_choices": lambda: {"id": "judge-1", "object": "chat.completion"},
            "empty_choices": lambda: {"id": "judge-1", "object": "chat.completion", "choices": []},
            "text_plain": lambda: PlainTextResponse("A"),
            "null_content": lambda: {"id": "judge-1", "object": "chat.completion", "created": 0,
                                     "model": body["model"], "choices": [
                                         {"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": None}}]},
        }
        if self.mode in malformed:
            return malformed[self.mode]()
        content = self.verdict(body["messages"][-1]["content"])
        return {"id": "judge-1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """Runs ``judge.app`` with uvicorn in a thread on 127.0.0.1."""

    def __init__(self, judge: ScriptedJudge):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(judge.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "judge server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
