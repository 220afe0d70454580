"""kbsync: keeps Chroma collections in sync with help-center articles and external docs.

Importing the package loads nothing heavy (no chromadb, onnxruntime or fastapi): `kbsync --help` stays instant.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
