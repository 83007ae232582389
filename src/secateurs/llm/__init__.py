"""Pruning pretrained transformers (issue 11): offline models, offline text, one-shot LLM pruning.

Needs the optional extra: pip install -e ".[llm]" (transformers, gguf, accelerate). Submodules:
`models` (load by short name or directory), `text` (disjoint calibration / evaluation text),
`calibrate` (sequential block-by-block pruning, over `secateurs.methods.sequential`), `methods`
(magnitude, Wanda, SparseGPT as criterion × structure × allocation + OBS reconstruction;
unstructured and N:M), `evaluate` (perplexity, embedding similarity), `cli` (`secateurs llm`).
"""
