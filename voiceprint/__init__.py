"""Speaker verification and voice comparison with the GE2E encoder shipped in resemblyzer, offline.

    encoder = voiceprint.load_encoder()                  # loads the model once (thread-safe)
    vector = voiceprint.embed(samples, 16000)            # (256,) unit vector; thread-safe
    alice = voiceprint.enroll("alice", [(samples, 16000), ...])
    store = voiceprint.EnrollmentStore()                 # ~/.local/share/voice-assistant/voiceprints
    store.save(alice); alice = store.load("alice")
    result = voiceprint.verify(alice, samples, 16000)    # VerifyResult(score, threshold, accepted)
    score = voiceprint.compare(a, 16000, b, 22050)       # cosine similarity of two voices

Importing the package loads no model and touches no device. Errors: see `voiceprint.errors`.
CLI: `python -m voiceprint --help`; details in docs/voiceprint.md.
"""

from .audio import read_audio, record_microphone, synthesize_piper
from .encoder import EMBEDDING_SIZE, SpeakerEncoder, embed, load_encoder
from .enrollment import Enrollment, EnrollmentStore, cosine, default_store_dir, validate_name
from .errors import (
    AudioError,
    AudioFileError,
    AudioTooShortError,
    EnrollmentError,
    EnrollmentExistsError,
    EnrollmentFormatError,
    EnrollmentNotFoundError,
    InvalidNameError,
    MicrophoneError,
    ModelError,
    SynthesisError,
    VoiceprintError,
)
from .features import MIN_SPEECH_S, SAMPLE_RATE_HZ
from .verification import DEFAULT_THRESHOLD, VerifyResult, compare, enroll, verify

__all__ = [
    "DEFAULT_THRESHOLD",
    "EMBEDDING_SIZE",
    "MIN_SPEECH_S",
    "SAMPLE_RATE_HZ",
    "AudioError",
    "AudioFileError",
    "AudioTooShortError",
    "Enrollment",
    "EnrollmentError",
    "EnrollmentExistsError",
    "EnrollmentFormatError",
    "EnrollmentNotFoundError",
    "EnrollmentStore",
    "InvalidNameError",
    "MicrophoneError",
    "ModelError",
    "SpeakerEncoder",
    "SynthesisError",
    "VerifyResult",
    "VoiceprintError",
    "compare",
    "cosine",
    "default_store_dir",
    "embed",
    "enroll",
    "load_encoder",
    "read_audio",
    "record_microphone",
    "synthesize_piper",
    "validate_name",
    "verify",
]
