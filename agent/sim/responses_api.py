"""The Responses API (``/v1/responses``), answered alike by every simulated server.

The events are the ones the ``openai`` client parses: ``response.created`` ...
``response.completed``, each with its ``sequence_number``, usage on the completed response.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from agent.sim.errors import SimError, text_of
from agent.sim.runner import Plan, StreamShape
from agent.sim.wire import sse

__all__ = ["ResponseAnswer", "turns"]


def turns(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) of a Responses request: its instructions, then its input items."""
    out: list[tuple[str, str]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        out.append(("system", instructions))
    raw_input = body.get("input")
    if isinstance(raw_input, str):
        return [*out, ("user", raw_input)]
    if not isinstance(raw_input, list):
        raise SimError(400, "input: Field required (a string or a list of input items)", param="input")
    for item in raw_input:
        if not isinstance(item, dict):
            raise SimError(400, "input items must be objects", param="input")
        if "role" in item:
            out.append((str(item["role"]), text_of(item.get("content"))))
        elif item.get("type") == "function_call_output":
            out.append(("tool", str(item.get("output") or "")))
        elif item.get("type") == "function_call":
            out.append(("assistant", str(item.get("arguments") or "")))
    return out


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponseAnswer:
    """The answer to one Responses request, whole or as a stream of events."""

    def __init__(self, body: dict[str, Any], plan: Plan) -> None:
        self.body = body
        self.plan = plan
        self.resp_id = f"resp_{uuid.uuid4().hex}"
        self.msg_id = f"msg_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.final_status = "incomplete" if plan.finish_reason == "length" else "completed"
        self._seq = 0

    def response(
        self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        body = self.body
        incomplete = status == "incomplete"
        return {
            "id": self.resp_id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "metadata": body.get("metadata") or {},
            "model": self.plan.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": None,
            "service_tier": "auto",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": usage,
            "user": None,
        }

    def usage(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "input_tokens": plan.prompt_tokens,
            "input_tokens_details": {"cached_tokens": plan.cached_tokens},
            "output_tokens": plan.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": plan.prompt_tokens + plan.completion_tokens,
        }

    def message(self, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.msg_id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": content,
        }

    def whole(self) -> dict[str, Any]:
        output = [self.message("completed", [_text_part(self.plan.text)])]
        return self.response(self.final_status, output, self.usage())

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse(payload, event=kind)

    def stream(self) -> StreamShape:
        where = {"item_id": self.msg_id, "output_index": 0, "content_index": 0}
        event = self.event
        head = [
            event("response.created", response=self.response("in_progress", [], None)),
            event("response.in_progress", response=self.response("in_progress", [], None)),
            event("response.output_item.added", output_index=0, item=self.message("in_progress", [])),
            event("response.content_part.added", **where, part=_text_part("")),
        ]

        def frame(_: int, piece: str) -> bytes:
            return event("response.output_text.delta", **where, delta=piece, logprobs=[])

        def tail() -> list[bytes]:
            text = self.plan.text
            done_item = self.message("completed", [_text_part(text)])
            return [
                event("response.output_text.done", **where, text=text, logprobs=[]),
                event("response.content_part.done", **where, part=_text_part(text)),
                event("response.output_item.done", output_index=0, item=done_item),
                event(
                    "response.completed", response=self.response(self.final_status, [done_item], self.usage())
                ),
            ]

        return StreamShape(head, frame, tail)
