"""The AI/ML API client: streamed chat completions, usage accounting and a small error tree."""

from bot.llm.client import AimlClient, ChatStream
from bot.llm.errors import (
    BadRequestError,
    ConfigurationError,
    LLMError,
    LLMTimeoutError,
    OutOfCreditsError,
    RateLimitedError,
    StreamInterruptedError,
    UnavailableError,
)
from bot.llm.types import ChatMessage, CompletionResult, Delta, Usage

__all__ = [
    "AimlClient",
    "BadRequestError",
    "ChatMessage",
    "ChatStream",
    "CompletionResult",
    "ConfigurationError",
    "Delta",
    "LLMError",
    "LLMTimeoutError",
    "OutOfCreditsError",
    "RateLimitedError",
    "StreamInterruptedError",
    "UnavailableError",
    "Usage",
]
