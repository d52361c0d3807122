"""The prompts DeepSeek-OCR was trained on (torch-free, so a CLI can list the tasks without torch).

The model is completion-style, not a chatbot (spec §7.4): wording matters, and every prompt
starts with the image slot that the processor expands into the page's vision tokens.
"""

from __future__ import annotations

#: Where the page's vision tokens go; one special id in the tokenizer.
IMAGE_TOKEN = "<image>"
#: Asks for layout records (``<|ref|>label<|/ref|><|det|>boxes<|/det|>``) with the text.
GROUNDING_TOKEN = "<|grounding|>"

TASK_PROMPTS: dict[str, str] = {
    "markdown": f"{IMAGE_TOKEN}\n{GROUNDING_TOKEN}Convert the document to markdown.",
    "text": f"{IMAGE_TOKEN}\nFree OCR.",
    "figure": f"{IMAGE_TOKEN}\nParse the figure.",
    "describe": f"{IMAGE_TOKEN}\nDescribe this image in detail.",
    "ocr_image": f"{IMAGE_TOKEN}\n{GROUNDING_TOKEN}OCR this image.",
}


def locate_prompt(text: str) -> str:
    """Prompt asking for the boxes of ``text`` in the image (grounded reply)."""
    return f"{IMAGE_TOKEN}\nLocate <|ref|>{text}<|/ref|> in the image."


def with_image_slot(prompt: str) -> str:
    """``prompt`` as sent to the model: a prompt without the image slot gets it in front."""
    return prompt if IMAGE_TOKEN in prompt else f"{IMAGE_TOKEN}\n{prompt}"
