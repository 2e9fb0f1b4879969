"""``task: causal-lm``: distil a causal language model token by token and ship it as ONNX with a KV cache.

Modules: ``config`` (the pipeline section), ``data`` (documents, splits, packing, held prompts, sequence-level
transfer set), ``models`` (teacher from a folder or GGUF, student from teacher layers), ``losses`` (token-level
divergences), ``train`` (teacher-output store, one arm), ``evaluate`` (perplexity, agreement, ROUGE-L),
``export`` (optimum with the KV cache, parity, int8-dynamic), ``bench`` (TTFT and per-token decode latency),
``report`` and ``run`` (``run_causal_lm_stages``: the whole task, stage by stage).
"""
