"""The built-in LLM inference engine.

A Llama-family decoder with a paged KV cache, iteration-level continuous batching with
chunked prefill (Sarathi-Serve style), tensor parallelism and an OpenAI-compatible server::

    charbench serve --model tiny --port 8000

In process::

    from charbench.engine.api import EngineConfig, SamplingParams
    from charbench.engine.engine import LLMEngine
    engine = LLMEngine(EngineConfig(model="tiny"))
    engine.add_request("r0", "Hello", SamplingParams(max_tokens=8))
    while engine.has_unfinished():
        for out in engine.step(): ...
"""
