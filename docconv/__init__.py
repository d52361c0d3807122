"""docconv: documents to editable Markdown with DeepSeek-OCR, locally."""

__version__ = "0.1.0"
