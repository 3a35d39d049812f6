"""quant-study: a post-training quantization study of a language model, as a Snakemake workflow.

The modules mirror the workflow's stages; each is importable and testable without Snakemake.
"""

__version__ = "0.1.0"
