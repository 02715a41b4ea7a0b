"""Errors of the voiceprint package, part of the assistant's one exception tree.

    VoiceAssistantError                  (voice_assistant.errors)
    └── VoiceprintError
        ├── AudioError                   audio we cannot use
        │   ├── AudioFileError           WAV missing, unreadable or not a WAV
        │   ├── AudioTooShortError       less speech than `MIN_SPEECH_S`
        │   └── MicrophoneError          no microphone, or it could not be opened
        ├── EnrollmentError              enrollment store problems
        │   ├── InvalidNameError         a name that is not a safe file name
        │   ├── EnrollmentNotFoundError  no enrollment of that name
        │   ├── EnrollmentExistsError    enrolling over an existing one without `overwrite`
        │   └── EnrollmentFormatError    a corrupt, unknown-version or other-model enrollment file
        ├── ModelError                   the GE2E weights are missing or unloadable
        └── SynthesisError               the Piper voice for `compare --piper` failed

Every message is one line that says what is wrong; the CLI prints it and exits 2.
"""

from __future__ import annotations

from voice_assistant.errors import VoiceAssistantError


class VoiceprintError(VoiceAssistantError):
    """Base class of every error the voiceprint package raises on purpose."""


class AudioError(VoiceprintError):
    """Audio that cannot be embedded."""


class AudioFileError(AudioError):
    """A WAV file is missing, unreadable or not a WAV."""


class AudioTooShortError(AudioError):
    """Too little speech (after silence trimming) for a reliable embedding."""


class MicrophoneError(AudioError):
    """No usable microphone, or recording from it failed."""


class EnrollmentError(VoiceprintError):
    """A problem with stored enrollments."""


class InvalidNameError(EnrollmentError):
    """A speaker name that is not allowed (it must be a plain, safe file name)."""


class EnrollmentNotFoundError(EnrollmentError):
    """No enrollment is stored under that name."""


class EnrollmentExistsError(EnrollmentError):
    """An enrollment of that name exists and replacing it was not asked for."""


class EnrollmentFormatError(EnrollmentError):
    """An enrollment file is corrupt, of an unknown version, or made with another model."""


class ModelError(VoiceprintError):
    """The speaker-encoder weights cannot be found or loaded."""


class SynthesisError(VoiceprintError):
    """A Piper voice could not be loaded or produced no audio."""
