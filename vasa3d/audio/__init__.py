"""Audio: loading, frame-rate features, speech synthesis with phoneme timings, phonemes -> motion.

Names load lazily (librosa and the espeak-ng library are not paid for by code that needs neither).
"""

_LAZY = {
    "AudioError": "vasa3d.audio.io", "AudioNotFoundError": "vasa3d.audio.io", "AudioDecodeError": "vasa3d.audio.io",
    "EmptyAudioError": "vasa3d.audio.io", "SilentAudioError": "vasa3d.audio.io", "ShortAudioError": "vasa3d.audio.io",
    "load_audio": "vasa3d.audio.io", "stream_audio": "vasa3d.audio.io", "resample": "vasa3d.audio.io",
    "AudioFeatureExtractor": "vasa3d.audio.features", "FeatureStream": "vasa3d.audio.features",
    "features_from_file": "vasa3d.audio.features", "SpeechEncoderFeatures": "vasa3d.audio.features",
    "Phoneme": "vasa3d.audio.speech", "SpeechClip": "vasa3d.audio.speech", "synthesize": "vasa3d.audio.speech",
    "list_voices": "vasa3d.audio.speech", "SpeechSynthesisError": "vasa3d.audio.speech",
    "speech_motion": "vasa3d.audio.visemes", "mouth_opening": "vasa3d.audio.visemes",
    "mouth_curves": "vasa3d.audio.visemes", "viseme_class": "vasa3d.audio.visemes",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vasa3d.audio' has no attribute {name!r}")
