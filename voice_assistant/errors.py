"""One exception tree for the whole assistant.

    VoiceAssistantError
    ├── SetupError          a start-up problem the user must fix (missing model, bad flag, no device)
    │   ├── AudioDeviceError
    │   └── WavFormatError
    │   └── ConfigError     a bad option, config file or flag (config.py; UsageError in cli.py)
    └── LLMError            a problem talking to the language-model server during a turn
        ├── LLMConnectionError   cannot connect, connection lost
        │   └── LLMReadTimeout   the server stopped answering mid-request (a hang)
        ├── LLMProtocolError     HTTP error status or a malformed response
        │   ├── LLMContextOverflow  the prompt does not fit the model's context
        │   └── LLMRateLimited      HTTP 429: the server asks us to wait
        └── LLMTooSlowError      tokens keep coming, but nothing speakable for too long

Errors are converted to these types once, at the boundary of the module that meets them.
`main()` turns a SetupError into one line on stderr and a non-zero exit.
Cancellation (barge-in) is not an error: streams end quietly with `cancelled=True`.
"""


class VoiceAssistantError(Exception):
    """Base class of every error the assistant raises on purpose."""


class SetupError(VoiceAssistantError):
    """Start-up failed; the message says what is wrong and what to do."""


class AudioDeviceError(SetupError):
    """An audio device could not be found or opened."""


class WavFormatError(SetupError):
    """A WAV file is missing, unreadable or in a format we cannot read."""


class LLMError(VoiceAssistantError):
    """Talking to llama-server failed during a turn."""


class LLMConnectionError(LLMError):
    """The server could not be reached, closed the connection, or stopped answering."""


class LLMReadTimeout(LLMConnectionError):
    """The server accepted the request but sent nothing for the read timeout: it hangs."""


class LLMProtocolError(LLMError):
    """The server answered with an HTTP error or a response we cannot parse."""


class LLMContextOverflow(LLMProtocolError):
    """The server refused the prompt: it exceeds the model's context window."""


class LLMRateLimited(LLMProtocolError):
    """The server answered HTTP 429; `retry_after_s` is its Retry-After, if it gave one."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LLMTooSlowError(LLMError):
    """The reply made no speakable progress for too long (a trickling or endlessly thinking stream)."""
