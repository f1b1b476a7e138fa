"""kefu's intent engine: intent, calibrated confidence, out-of-scope flag and sentiment per message.

Run time (onnxruntime + tokenizers + numpy, never torch): ``encoder`` loads a model folder,
``heads`` turns its outputs into decisions, ``classifier`` gives ``Prediction`` objects,
``service`` is the trio micro-batching service. Training (torch, the ``train`` extra):
``bert``, ``train``, ``export``. ``data`` is shared by both. See docs/nlp.md.
"""
