"""Enroll, verify and compare: the package's policy on top of the encoder."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

import numpy as np

from . import features
from .encoder import SpeakerEncoder, load_encoder
from .enrollment import Enrollment, cosine, validate_name
from .errors import AudioError, EnrollmentFormatError

DEFAULT_THRESHOLD = 0.72
"""Cosine score at or above which `verify` accepts: the equal-error-rate threshold (0.717, EER 1.2%)
that scripts/calibrate_voiceprint.py measured for 9-second enrollments against 3 s clips of 9 real
speakers (docs/voiceprint.md). Shorter utterances score lower: about 0.66 suits 2 s."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of comparing an utterance with an enrollment."""

    score: float
    """Cosine similarity in [-1, 1]; higher means more alike."""
    threshold: float
    """The score needed to accept."""
    accepted: bool
    """True when `score >= threshold`."""


def enroll(
    name: str,
    clips: Iterable[tuple[np.ndarray, int]],
    encoder: SpeakerEncoder | None = None,
    now: datetime | None = None,
) -> Enrollment:
    """Voiceprint of `name` from (samples, sample_rate_hz) clips of their speech (1 s of speech each at least)."""
    validate_name(name)
    encoder = encoder or load_encoder()
    embeddings, audio_s = [], 0.0
    for samples, rate_hz in clips:
        embeddings.append(encoder.embed(samples, rate_hz))
        audio_s += len(samples) / float(rate_hz)
    if not embeddings:
        raise AudioError("enrollment needs at least one clip of speech")
    mean = np.mean(embeddings, axis=0)
    embedding = (mean / np.linalg.norm(mean)).astype(np.float32)
    created = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(microsecond=0)
    return Enrollment(name, embedding, len(embeddings), audio_s, created, encoder.model_id)


def verify(
    enrollment: Enrollment,
    audio: np.ndarray,
    sample_rate_hz: int,
    threshold: float = DEFAULT_THRESHOLD,
    encoder: SpeakerEncoder | None = None,
) -> VerifyResult:
    """Does `audio` sound like the enrolled speaker? EnrollmentFormatError if made by another model."""
    encoder = encoder or load_encoder()
    if enrollment.model_id != encoder.model_id:
        raise EnrollmentFormatError(
            f"enrollment {enrollment.name!r} was made with model {enrollment.model_id}, "
            f"not {encoder.model_id}: enroll the speaker again"
        )
    score = enrollment.score(encoder.embed(audio, sample_rate_hz))
    return VerifyResult(score=score, threshold=float(threshold), accepted=bool(score >= threshold))


def compare(
    audio_a: np.ndarray,
    rate_a_hz: int,
    audio_b: np.ndarray,
    rate_b_hz: int,
    encoder: SpeakerEncoder | None = None,
) -> float:
    """Cosine similarity of two voices (e.g. a person against a Piper voice); >= DEFAULT_THRESHOLD: alike."""
    encoder = encoder or load_encoder()
    return cosine(encoder.embed(audio_a, rate_a_hz), encoder.embed(audio_b, rate_b_hz))


def check_speech(audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """`audio` prepared for the encoder, without loading it: fails fast on too-short or bad audio."""
    return features.prepare(audio, sample_rate_hz)
