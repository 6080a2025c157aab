"""Fakes for the gateway's tests: real servers on 127.0.0.1, never mocks of the transport.

`FakeUpstream` speaks the providers' wire formats (six OpenAI-style flavors, Anthropic's Messages
API, Vertex AI's Gemini API with Google's OAuth token endpoint, and AWS Bedrock Runtime with SigV4
checked), records every request and misbehaves when a fault word (`FAULT_WORDS`, and for the
anthropic, vertex and bedrock flavors `ANTHROPIC_FAULT_WORDS`, `VERTEX_FAULT_WORDS` and
`BEDROCK_FAULT_WORDS`) appears in the model name. `tests.fakes.eventstream` encodes the AWS event
stream that Bedrock's ConverseStream answers in.
"""

from tests.fakes import upstream
from tests.fakes.eventstream import (
    corrupt_message_crc,
    encode_error,
    encode_event,
    encode_event_message,
    encode_exception,
)
from tests.fakes.upstream import *  # noqa: F403  (upstream.__all__ is the list of what it offers)

__all__ = [
    *upstream.__all__,
    "corrupt_message_crc",
    "encode_error",
    "encode_event",
    "encode_event_message",
    "encode_exception",
]
