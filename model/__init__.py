"""DeepSeek-OCR (arXiv 2510.18234) as a native transformers model: config, model, processor, generation."""
