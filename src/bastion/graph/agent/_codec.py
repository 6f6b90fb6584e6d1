"""JSON shapes for what the agent loop journals: model responses and tool results.

The step journal (`memo`) persists plain JSON, so a resumed run decodes exactly what the
first attempt received instead of calling the model or the tool again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from bastion.types import Message, ModelResponse, ToolResult, Usage, part_from_dict, part_to_dict


def response_to_dict(response: ModelResponse) -> dict[str, Any]:
    return {
        "message": response.message.to_dict(),
        "usage": response.usage.to_dict(),
        "model": response.model,
        "finish_reason": response.finish_reason,
        "cost_usd": response.cost_usd,
        "cached": response.cached,
        "response_id": response.response_id,
    }


def response_from_dict(data: Mapping[str, Any]) -> ModelResponse:
    return ModelResponse(
        message=Message.from_dict(data["message"]),
        usage=Usage.from_dict(data.get("usage") or {}),
        model=data.get("model", ""),
        finish_reason=data.get("finish_reason", "stop"),
        cost_usd=data.get("cost_usd"),
        cached=bool(data.get("cached", False)),
        response_id=data.get("response_id"),
    )


def result_to_dict(result: ToolResult) -> dict[str, Any]:
    return part_to_dict(result)


def result_from_dict(data: Mapping[str, Any]) -> ToolResult:
    return cast(ToolResult, part_from_dict(data))
