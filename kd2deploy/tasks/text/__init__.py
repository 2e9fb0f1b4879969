"""Hugging Face text classification (``task: text``): data, models, losses, training, export, benchmark.

Needs the ``[hf]`` extra (transformers, optimum, optimum-onnx, tokenizers); imported only by text pipelines.
"""
