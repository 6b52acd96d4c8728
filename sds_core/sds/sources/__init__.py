from .base import SecretSpec, Source, SourceError

__all__ = ["SecretSpec", "Source", "SourceError"]
