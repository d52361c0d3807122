"""Sources: what to convert and its pages as images.

* :mod:`~docconv.sources.inputs` - files, directories, stdin and path lists to typed documents
  (typed by content, never by extension);
* :mod:`~docconv.sources.pages` - docconv's one loader: a document's pages rendered to upright
  RGB images, one at a time (PDFs with PyMuPDF, images with Pillow);
* :mod:`~docconv.sources.selection` - ``--pages``.

A new input type is a signature in ``inputs._SIGNATURES`` and, unless Pillow or PyMuPDF
opens it, one more :class:`~docconv.sources.pages.PageSource` in ``pages``.
"""
