"""tensorwall-proxy: one OpenAI-compatible base URL in front of nine LLM providers."""

__version__ = "0.1.0"
