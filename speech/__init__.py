"""Speech-model library layer: VAD, ASR, TTS voices, text chunking, resampling.

Submodules are imported explicitly (``from voxmesh.speech.vad import SileroVad``) so that
importing the package never pulls in onnxruntime or CTranslate2 by itself.
"""
