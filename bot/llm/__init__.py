"""The AI/ML API client (bot.llm.client): streamed chat completions, usage and a small error tree.

The package itself imports no HTTP library, so the domain can use its types and errors.
"""

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
    "BadRequestError",
    "ChatMessage",
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
